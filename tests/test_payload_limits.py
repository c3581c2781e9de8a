"""Oversized payloads (issue 10, item 1): refused at every entry with ``PayloadTooLarge``
(size and limit), never a closed connection, a crash loop or nats-py's own error."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
from activity_workflows import approval, approve, tokens
from payload_workflows import (
    MB,
    asks_for_huge,
    asks_for_huge_checkpoint,
    huge_checkpoint,
    huge_result,
    measure,
    waits_for_bool,
)

from perdure import Client, PayloadTooLarge, Settings, Worker
from perdure.runtime.events import ActivityFailed, SignalReceived

from support import watch_history

pytestmark = pytest.mark.usefixtures("bounded_payloads")  # conftest.py: the one-message limit


async def assert_healthy(client: Client, runtime: Worker, tag: str) -> None:
    """Both connections are up and a normal workflow still completes."""
    assert client.conn.is_connected
    assert runtime.services.conn.is_connected
    handle = await client.start(measure, "hello", id=f"healthy-{tag}")
    assert await handle.result(timeout=30) == 5


async def test_oversized_start_inputs_are_refused_on_the_client(settings: Settings, client: Client) -> None:
    async with Worker([measure], settings=settings) as runtime:
        for size in (1100 * 1024, 5 * MB):
            with pytest.raises(PayloadTooLarge) as caught:
                await client.start(measure, "x" * size, id=f"big-{size}")
            assert caught.value.size >= size and 0 < caught.value.limit < size
            assert str(caught.value.limit) in caught.value.message
        await assert_healthy(client, runtime, "start")
        with pytest.raises(Exception, match="no execution"):
            await client.describe(f"big-{1100 * 1024}")


async def test_a_message_that_fits_only_without_its_headers_is_refused_before_sending(
    settings: Settings, client: Client
) -> None:
    """The server counts headers: 1 MiB of payload plus a Nats-Msg-Id would close the connection."""
    async with Worker([measure], settings=settings) as runtime:
        max_payload = client.conn.max_payload
        data = b"x" * (max_payload - 16)  # fits alone; not with the header
        with pytest.raises(PayloadTooLarge, match=str(max_payload)):
            await client.conn.publish(client.names.inbox("headers"), data, msg_id="headers-1")
        with pytest.raises(PayloadTooLarge):
            await client.conn.publish(client.names.inbox("headers"), b"x" * (5 * MB))
        await assert_healthy(client, runtime, "headers")


async def test_a_1mb_completion_over_raw_nats_gets_a_clear_error(settings: Settings, client: Client) -> None:
    """The request fits, the inbox message the runtime would forward (with its reply header)
    does not: the answer is payload.too_large and the runtime keeps its connection."""
    async with Worker([approval, approve, measure], settings=settings) as runtime:
        handle = await client.start(approval, "big", id="big-completion")
        token = await asyncio.wait_for(tokens("big-completion").get(), timeout=10)
        envelope = len(json.dumps({"token": token, "result": ""}))
        body = json.dumps({"token": token, "result": "x" * (client.conn.max_payload - envelope)})
        assert len(body) == client.conn.max_payload
        reply = await client.conn.request(client.names.api("complete"), body.encode(), timeout=10)
        answer = json.loads(reply)
        assert answer["ok"] is False and answer["error"]["code"] == "payload.too_large", answer
        assert str(client.conn.max_payload - 16 * 1024) in answer["error"]["message"]
        await assert_healthy(client, runtime, "completion")
        # The activity is still open: a result that fits completes it.
        await client.complete_activity(token, True)
        assert await handle.result(timeout=30) == "approved"


async def test_oversized_token_requests_are_refused_on_the_client(settings: Settings, client: Client) -> None:
    async with Worker([approval, approve, measure], settings=settings) as runtime:
        handle = await client.start(approval, "big", id="big-token-verbs")
        token = await asyncio.wait_for(tokens("big-token-verbs").get(), timeout=10)
        with pytest.raises(PayloadTooLarge):
            await client.complete_activity(token, "x" * (2 * MB))
        with pytest.raises(PayloadTooLarge):
            await client.complete_activity(token, "x" * (client.conn.max_payload - 100))
        with pytest.raises(PayloadTooLarge):
            await client.heartbeat_activity(token, "x" * (2 * MB))
        with pytest.raises(PayloadTooLarge):
            await client.fail_activity(token, "x" * (2 * MB))
        await assert_healthy(client, runtime, "token-verbs")
        await client.complete_activity(token, False)
        assert await handle.result(timeout=30) == "rejected"


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "work-item"])
async def test_an_activity_result_too_large_fails_the_activity(
    settings: Settings, client: Client, eager: bool
) -> None:
    """2 MB returned by an activity: that attempt fails with payload.too_large (recorded, not
    retried), the workflow sees ActivityError, the runtime carries on."""
    settings = replace(settings, eager_activities=eager)
    async with Worker([asks_for_huge, huge_result, measure], settings=settings) as runtime:
        handle = await client.start(asks_for_huge, 2 * MB, id="huge-result")
        outcome = await handle.result(timeout=30)
        assert outcome.startswith(
            "ActivityError PayloadTooLarge: result of activity 'huge_result' is 2097"
        ), outcome
        failed = [e for e in await handle.history() if isinstance(e, ActivityFailed)]
        assert [e.error.code for e in failed] == ["payload.too_large"]
        assert failed[0].error.retryable is False
        await assert_healthy(client, runtime, "result")


async def test_a_checkpoint_too_large_fails_the_attempt_clearly(settings: Settings, client: Client) -> None:
    async with Worker([asks_for_huge_checkpoint, huge_checkpoint, measure], settings=settings) as runtime:
        handle = await client.start(asks_for_huge_checkpoint, 2 * MB, id="huge-checkpoint")
        outcome = await handle.result(timeout=30)
        assert outcome.startswith("ActivityError PayloadTooLarge: heartbeat details"), outcome
        await assert_healthy(client, runtime, "checkpoint")


async def test_oversized_signals_are_refused(settings: Settings, client: Client) -> None:
    async with (
        Worker([waits_for_bool, measure], settings=settings) as runtime,
        watch_history(client) as watch,
    ):
        handle = await client.start(waits_for_bool, id="big-signal")
        with pytest.raises(PayloadTooLarge):
            await handle.signal("approval", "x" * (2 * MB))
        with pytest.raises(PayloadTooLarge):
            await client.signal("big-signal", "approval", "x" * (client.conn.max_payload - 100), id="s")
        envelope = len(json.dumps({"execution_id": "big-signal", "name": "approval", "payload": ""}))
        body = json.dumps(
            {
                "execution_id": "big-signal",
                "name": "approval",
                "payload": "x" * (client.conn.max_payload - envelope),
            }
        )
        reply = await client.conn.request(client.names.api("signal"), body.encode(), timeout=10)
        answer = json.loads(reply)
        assert answer["ok"] is False and answer["error"]["code"] == "payload.too_large", answer
        await assert_healthy(client, runtime, "signal")
        await handle.signal("approval", True)
        assert await handle.result(timeout=30) == "approval=True"
        assert len([e for e in watch.events("big-signal") if isinstance(e, SignalReceived)]) == 1


def test_nats_py_max_payload_error_is_mapped() -> None:
    """The last line of defence (nats-py refuses a payload over max_payload before sending)."""
    import nats.errors

    from perdure.runtime.nats_client import map_errors

    with pytest.raises(PayloadTooLarge, match="publish to somewhere"), map_errors("publish to somewhere"):
        raise nats.errors.MaxPayloadError
