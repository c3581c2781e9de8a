"""Read-only looks at streams and consumers (operators' questions, off the hot path)."""

from __future__ import annotations

from dataclasses import dataclass

import nats.js.errors

from .nats_client import Connection, map_errors


@dataclass(frozen=True, slots=True)
class ConsumerLoad:
    waiting: int  # pull requests outstanding: someone is asking for work
    ack_pending: int  # messages delivered and not yet acked: someone is working


async def subject_counts(conn: Connection, stream: str, subjects: str) -> dict[str, int]:
    """Messages stored per subject matching ``subjects`` (wildcards allowed)."""
    js = conn.raw.jetstream()
    with map_errors(f"inspect {stream}"):
        info = await js.stream_info(stream, subjects_filter=subjects)
    return dict(info.state.subjects or {})


async def consumer_load(conn: Connection, stream: str, consumer: str) -> ConsumerLoad | None:
    """How busy a consumer is, or None if it does not exist."""
    js = conn.raw.jetstream()
    with map_errors(f"inspect {stream}/{consumer}"):
        try:
            info = await js.consumer_info(stream, consumer)
        except nats.js.errors.NotFoundError:
            return None
    return ConsumerLoad(waiting=info.num_waiting or 0, ack_pending=info.num_ack_pending or 0)
