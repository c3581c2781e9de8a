"""Read-only looks at streams and consumers (operators' questions, off the hot path).

Through ``Connection``'s inspection methods: nothing here touches nats-py itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConnectionLost, PerdureError
from .nats_client import Connection


@dataclass(frozen=True, slots=True)
class ConsumerLoad:
    waiting: int  # pull requests outstanding: someone is asking for work
    ack_pending: int  # messages delivered and not yet acked: someone is working


async def subject_counts(conn: Connection, stream: str, subjects: str) -> dict[str, int]:
    """Messages stored per subject matching ``subjects`` (wildcards allowed)."""
    info = await conn.stream_info(stream, subjects_filter=subjects)
    return dict(info.state.subjects or {})


async def consumer_load(conn: Connection, stream: str, consumer: str) -> ConsumerLoad | None:
    """How busy a consumer is, or None if it does not exist."""
    try:
        info = await conn.consumer_info(stream, consumer)
    except ConnectionLost:
        raise
    except PerdureError:  # JetStream's "consumer not found" (10014), as map_errors words it
        return None
    return ConsumerLoad(waiting=info.num_waiting or 0, ack_pending=info.num_ack_pending or 0)
