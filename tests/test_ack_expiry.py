"""Pipelined publishes whose ack never comes fail with ``ConnectionLost`` after the ack
timeout, each at its own deadline, from the one timer that serves them all
(runtime/nats_client.py ``_expire_acks``); an ack that does come resolves its publish."""

from __future__ import annotations

import asyncio

import pytest

from perdure import EmbeddedServer
from perdure.runtime.errors import ConnectionLost
from perdure.runtime.nats_client import Connection


async def test_unanswered_publishes_expire_each_at_its_deadline(nats_server: EmbeddedServer) -> None:
    conn = await Connection.connect(nats_server.url)
    listener = await Connection.connect(nats_server.url)
    try:
        # A plain subscriber takes the publishes and never answers: no JetStream ack comes.
        _, seen = await listener.subscribe("silent.>")
        conn._ack_timeout = 0.4
        loop = asyncio.get_running_loop()
        sent: list[tuple[float, asyncio.Future[object]]] = []
        for i in range(3):
            sent.append((loop.time(), await conn.publish_nowait(f"silent.{i}", b"x")))
            await anext(seen)  # the next one goes out after this one arrived
        for at, fut in sent:
            with pytest.raises(ConnectionLost, match="did not acknowledge"):
                await fut
            assert loop.time() - at >= 0.4
        assert not conn._acks
    finally:
        await conn.close()
        await listener.close()
