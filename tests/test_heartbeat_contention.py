"""Heartbeats racing on one attempt's record (issue 10, item 12: compare-and-set conflicts)."""

from __future__ import annotations

import asyncio

import pytest
from activity_workflows import approval, approve, tokens
from payload_workflows import held, holds

from perdure import Client, Settings, Worker
from perdure.actors.completion import HeartbeatService
from perdure.runtime.tokens import decode_token


@pytest.mark.parametrize(
    ("wf", "fn"), [(approval, approve), (holds, held)], ids=["no-heartbeat-timeout", "heartbeat-timeout"]
)
async def test_concurrent_heartbeats_never_answer_closed_for_a_live_attempt(
    settings: Settings, client: Client, wf: object, fn: object
) -> None:
    """40 heartbeats at once for one open attempt: each re-put of its record conflicts with
    the others; a live attempt must never be told it is closed (it would give up)."""
    async with Worker([wf, fn], settings=settings):
        handle = await client.start(wf, "racing", id="racing-heartbeats")
        token = await asyncio.wait_for(tokens("racing-heartbeats").get(), timeout=10)
        service = HeartbeatService(client.conn, client.names, await client.partitions())
        replies = await asyncio.gather(*[service.beat(decode_token(token), None) for _ in range(40)])
        closed = sum(reply.closed for reply in replies)
        assert closed == 0, f"{closed} of 40 heartbeats answered closed for a live attempt"
        assert all(reply.ok and not reply.cancel_requested for reply in replies)
        # Over the request subject, from the client, in parallel too.
        answers = await asyncio.gather(*[client.heartbeat_activity(token) for _ in range(20)])
        assert not any(answer.closed for answer in answers)
        if fn is held:  # the record's heartbeat TTL is armed
            data = decode_token(token)
            stored = await client.conn.get_last(
                f"KV_{client.names.timers_bucket}",
                f"$KV.{client.names.timers_bucket}.{service._record_key(data).key()}",
            )
            assert stored is not None and stored.headers.get("Nats-TTL") == "5s", stored
        await client.complete_activity(token, True)
        assert await handle.result(timeout=30) == "approved"
        # Once it is closed, a heartbeat says so.
        assert (await service.beat(decode_token(token), None)).closed
