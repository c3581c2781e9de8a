"""Idempotent creation of streams, KV buckets and consumers (admin calls, off the hot path)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats.js.errors
import structlog
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)

from .errors import ConfigurationError, ConnectionLost
from .naming import kv_stream, kv_subject
from .nats_client import Connection, map_errors, nats_core

log = structlog.get_logger("perdure.admin")

STREAM_NOT_FOUND = 10059
STREAM_NAME_IN_USE = 10058
CONSUMER_NOT_FOUND = 10014


async def ensure_stream(
    conn: Connection,
    *,
    name: str,
    subjects: list[str],
    replicas: int,
    work_queue: bool = False,
    partition: tuple[int, str, str] | None = None,
    allow_direct: bool = True,
    allow_msg_ttl: bool = False,
    marker_ttl: float | None = None,
    max_msgs_per_subject: int = -1,
    duplicate_window: float = 300.0,
    rollup: bool = False,
) -> None:
    """Create the stream, or update it to this config if it exists."""
    config = StreamConfig(
        name=name,
        subjects=subjects,
        retention=RetentionPolicy.WORK_QUEUE if work_queue else RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        discard=DiscardPolicy.NEW if max_msgs_per_subject > 0 else DiscardPolicy.OLD,
        max_msgs_per_subject=max_msgs_per_subject,
        duplicate_window=duplicate_window,
        allow_direct=allow_direct,
        allow_msg_ttl=allow_msg_ttl or None,
        subject_delete_marker_ttl=marker_ttl,
        # None leaves the field out of the request (nats-py drops None fields), as for
        # allow_msg_ttl above; nats-py annotates it ``bool`` only.
        allow_rollup_hdrs=rollup or None,  # type: ignore[arg-type]
        deny_delete=False,
    )
    if partition is not None:
        _count, src, dest = partition
        config.subject_transform = SubjectTransform(src=src, dest=dest)
    js = nats_core(conn).jetstream()
    for attempt in range(5):
        try:
            with map_errors(f"provision stream {name}"):
                await _create_or_update(js, config, name, replicas)
            return
        except ConnectionLost:
            # On a cluster, two runtimes provisioning at once can leave a request unanswered
            # while the other's create is applied; the next attempt finds the stream.
            if attempt == 4:
                raise
            await asyncio.sleep(0.5 * (attempt + 1))


async def _create_or_update(js: Any, config: StreamConfig, name: str, replicas: int) -> None:
    try:
        await js.add_stream(config)  # idempotent when the stream exists with this config
        log.info("stream.ready", stream=name, replicas=replicas)
        return
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
    info = await js.stream_info(name)  # it exists with another config: check, then update
    current, wanted = info.config.subject_transform, config.subject_transform
    if current is not None and wanted is not None and current.dest != wanted.dest:
        raise ConfigurationError(
            f"stream {name} is partitioned as {current.dest}, not {wanted.dest}; "
            "the partition count of a namespace cannot change in place"
        )
    await js.update_stream(config)


async def ensure_kv_stream(
    conn: Connection, *, bucket: str, replicas: int, history: int = 1, marker_ttl: float | None = None
) -> None:
    """A KV bucket is a stream named ``KV_<bucket>`` over ``$KV.<bucket>.>``."""
    await ensure_stream(
        conn,
        name=kv_stream(bucket),
        subjects=[kv_subject(bucket, ">")],
        replicas=replicas,
        allow_direct=True,
        allow_msg_ttl=True,
        marker_ttl=marker_ttl,
        max_msgs_per_subject=history,
        duplicate_window=120.0,
        rollup=True,
    )


async def recreate_consumer(
    conn: Connection,
    *,
    stream: str,
    name: str,
    filter_subject: str,
    ack_wait: float,
    max_ack_pending: int,
) -> None:
    """Delete and create a durable pull consumer.

    On a work-queue stream this hands every unacknowledged message to the new consumer at
    once (instead of after ``ack_wait``) and fences the previous holder, whose pulls now
    fail with "consumer deleted".
    """
    await delete_consumer(conn, stream=stream, name=name)
    await ensure_consumer(
        conn,
        stream=stream,
        name=name,
        filter_subject=filter_subject,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending,
    )


async def ensure_consumer(
    conn: Connection,
    *,
    stream: str,
    name: str,
    filter_subject: str,
    ack_wait: float,
    max_ack_pending: int,
) -> None:
    config = ConsumerConfig(
        durable_name=name,
        name=name,
        filter_subject=filter_subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending,
        max_deliver=-1,
        max_waiting=512,
    )
    js = nats_core(conn).jetstream()
    with map_errors(f"create consumer {stream}/{name}"):
        await js.add_consumer(stream, config)


async def delete_consumer(conn: Connection, *, stream: str, name: str) -> None:
    js = nats_core(conn).jetstream()
    with map_errors(f"delete consumer {stream}/{name}"), contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_consumer(stream, name)


async def purge_subject(conn: Connection, *, stream: str, subject: str, keep_from_seq: int) -> None:
    """Remove messages of ``subject`` below ``keep_from_seq`` (continue-as-new trims history)."""
    js = nats_core(conn).jetstream()
    with map_errors(f"purge {subject}"):
        await js.purge_stream(stream, subject=subject, seq=keep_from_seq)


async def delete_streams(conn: Connection, names: list[str]) -> None:
    js = nats_core(conn).jetstream()
    for name in names:
        with map_errors(f"delete stream {name}"), contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(name)


async def consumer_pending(conn: Connection, *, stream: str, name: str) -> int:
    """Messages of the consumer's filter not yet delivered to it (its backlog)."""
    js = nats_core(conn).jetstream()
    with map_errors(f"read consumer {stream}/{name}"):
        info = await js.consumer_info(stream, name, timeout=2.0)
    return int(info.num_pending or 0)
