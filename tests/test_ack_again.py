"""An ack lost with a server that stops is sent again after the reconnect
(runtime/nats_consumer.py ``RecentAcks``), so its message does not wait out the ack wait
(30 s) and run again. Before: a plain ack lost this way left the message pending; a
confirmed ack (``ack_sync``) per message cured it at a round trip each on the hot path."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from perdure import EmbeddedServer
from perdure.runtime.nats_client import Connection
from perdure.runtime.nats_consumer import PullConsumer


async def _state(url: str) -> tuple[int, int, int]:
    """(messages not yet delivered, delivered and not acked, last delivered stream seq)."""
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().consumer_info("ACKS", "c")
        return info.num_pending or 0, info.num_ack_pending or 0, info.delivered.stream_seq or 0
    finally:
        await nc.close()


async def test_an_ack_lost_with_the_server_is_sent_again_after_the_reconnect(tmp_path: Path) -> None:
    server = EmbeddedServer(store_dir=tmp_path / "nats")
    server.start()
    try:
        admin = await nats.connect(server.url)
        js = admin.jetstream()
        await js.add_stream(StreamConfig(name="ACKS", subjects=["acks.>"]))
        await js.add_consumer(
            "ACKS", ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, ack_wait=30)
        )
        await js.publish("acks.1", b"work")
        await admin.close()

        conn = await Connection.connect(server.url)
        consumer = PullConsumer(conn, "ACKS", "c", credit=10)
        await consumer.start()
        [delivery] = await consumer.next_batch()
        async with asyncio.timeout(10):  # the server has stored that it delivered it
            while await _state(server.url) != (0, 1, 1):  # noqa: ASYNC110 - server state, no event
                await asyncio.sleep(0.05)

        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)  # the server takes nothing in from now on
        await delivery.ack()  # into the socket, never read
        server.kill()  # and the ack dies with the server
        server.start()
        async with asyncio.timeout(10):  # well within the 30 s ack wait: acked, not redelivered
            while await _state(server.url) != (0, 0, 1):  # noqa: ASYNC110 - server state, no event
                await asyncio.sleep(0.1)
        assert consumer._queue.empty(), "the message was delivered again"
        await consumer.stop()
        await conn.close()
    finally:
        server.stop()
