"""After a reconnect an inbox partition's consumer is recreated (runtime/nats_consumer.py
``restart_on_reconnect``, actors/partition_host.py): messages the server pushed as the
connection broke were lost in flight and would come back only after the 30 s ack wait; a
recreated consumer on the work-queue inbox hands every unacked message out again at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
from nats.js.api import RetentionPolicy, StreamConfig

from perdure import EmbeddedServer
from perdure.runtime.nats_admin import ensure_consumer, recreate_consumer
from perdure.runtime.nats_client import Connection
from perdure.runtime.nats_consumer import ConsumerReset, PullConsumer

ACK_WAIT = 30.0


async def test_a_consumer_is_recreated_after_a_reconnect_and_redelivers_at_once(tmp_path: Path) -> None:
    server = EmbeddedServer(store_dir=tmp_path / "nats")
    server.start()
    try:
        admin = await nats.connect(server.url)
        js = admin.jetstream()
        await js.add_stream(StreamConfig(name="WQ", subjects=["wq.>"], retention=RetentionPolicy.WORK_QUEUE))
        await admin.close()
        conn = await Connection.connect(server.url)
        spec = {
            "stream": "WQ",
            "name": "c",
            "filter_subject": "wq.>",
            "ack_wait": ACK_WAIT,
            "max_ack_pending": 10,
        }
        await ensure_consumer(conn, **spec)
        await conn.publish("wq.1", b"work")

        consumer = PullConsumer(conn, "WQ", "c", credit=10, restart_on_reconnect=True)
        await consumer.start()
        [delivered] = await consumer.next_batch()  # taken, never acked: as if lost in flight
        server.stop()
        server.start()
        async with asyncio.timeout(10):
            with pytest.raises(ConsumerReset):
                await consumer.next_batch()
        await consumer.stop()

        await recreate_consumer(conn, **spec)
        again = PullConsumer(conn, "WQ", "c", credit=10)
        await again.start()
        async with asyncio.timeout(5):  # at once, not after the 30 s ack wait
            [redelivered] = await again.next_batch()
        assert redelivered.stream_seq == delivered.stream_seq and redelivered.data == b"work"
        await again.stop()
        await conn.close()
    finally:
        server.stop()
