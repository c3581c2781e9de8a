"""Signals and cancels to nobody, and signals of the wrong type (issue 10, item 3)."""

from __future__ import annotations

import json

import pytest
from payload_workflows import declares_approval, measure, sees_bad_signals, waits_for_bool

from perdure import Client, ExecutionNotFound, InvalidPayload, Settings, Worker
from perdure.runtime.events import SignalReceived

from support import watch_history


def signal_payloads(events: list[object]) -> list[object]:
    return [json.loads(bytes(e.payload)) for e in events if isinstance(e, SignalReceived)]


async def test_signal_and_cancel_to_a_missing_execution_raise_not_found(
    settings: Settings, client: Client
) -> None:
    async with Worker([measure], settings=settings):
        with pytest.raises(ExecutionNotFound, match="nobody"):
            await client.signal("nobody", "approval", True)
        with pytest.raises(ExecutionNotFound, match="nobody"):
            await client.get_handle("nobody").signal("approval", True, id="s1")
        with pytest.raises(ExecutionNotFound, match="nobody"):
            await client.cancel("nobody")
        with pytest.raises(ExecutionNotFound, match="nobody"):
            await client.get_handle("nobody").cancel("why")
        # Nothing was left in the inbox for it.
        partitions = await client.partitions()
        stored = await client.conn.get_multi_last(
            client.names.inbox_stream, [f"{client.names.namespace}.inbox.*.nobody"]
        )
        assert stored == [] and partitions > 0


async def test_a_signal_right_after_the_start_is_accepted_even_with_no_runtime(
    settings: Settings, client: Client
) -> None:
    """The start is still in the inbox (no runtime has absorbed it): the execution exists."""
    async with Worker([waits_for_bool], settings=settings):
        pass  # provisions the namespace, then no runtime runs
    handle = await client.start(waits_for_bool, id="early-signal")
    await handle.signal("approval", True)
    async with Worker([waits_for_bool], settings=settings):
        assert await handle.result(timeout=30) == "approval=True"
    await handle.cancel()  # a closed execution exists too: accepted, and ignored


async def test_a_wrongly_typed_signal_is_refused_at_send_time(settings: Settings, client: Client) -> None:
    async with Worker([declares_approval], settings=settings), watch_history(client) as watch:
        handle = await client.start(declares_approval, id="typed")
        with pytest.raises(InvalidPayload, match=r"signal 'approval'.*bool"):
            await handle.signal("approval", "yes please")
        await client.get_handle("typed", declares_approval).signal("approval", False)
        assert await handle.result(timeout=30) == "approval=False"
    assert signal_payloads(watch.events("typed")) == [False]


async def test_a_wrongly_typed_signal_never_fails_the_execution(settings: Settings, client: Client) -> None:
    """Not declared, so not checked on sending: it is recorded, the workflow keeps waiting."""
    async with Worker([waits_for_bool], settings=settings), watch_history(client) as watch:
        handle = await client.start(waits_for_bool, id="untyped")
        await handle.signal("approval", 42)
        await watch.wait_for(lambda w: signal_payloads(w.events("untyped")) == [42])
        assert (await handle.describe()).status == "RUNNING"
        await handle.signal("approval", True)
        assert await handle.result(timeout=30) == "approval=True"
    assert signal_payloads(await handle.history()) == [42, True]


async def test_the_workflow_can_see_the_decode_error(settings: Settings, client: Client) -> None:
    async with Worker([sees_bad_signals], settings=settings):
        handle = await client.start(sees_bad_signals, id="sees")
        await handle.signal("approval", "maybe")
        await handle.signal("approval", True)
        seen = await handle.result(timeout=30)
    assert len(seen) == 2 and seen[1] == "approval=True"
    assert seen[0].startswith("InvalidPayload: signal 'approval' does not decode as bool"), seen


async def test_a_runtime_hosting_the_workflow_refuses_a_wrongly_typed_raw_signal(
    settings: Settings, client: Client
) -> None:
    """Over plain NATS the runtime that answers knows the declared type: payload.invalid."""
    async with Worker([declares_approval], settings=settings), watch_history(client) as watch:
        handle = await client.start(declares_approval, id="typed-raw")
        async for description in handle.watch():
            if description.status == "RUNNING":
                break
        subject = client.names.api("signal")
        answers = []
        for payload in ("yes please", True):
            body = json.dumps({"execution_id": "typed-raw", "name": "approval", "payload": payload})
            answers.append(json.loads(await client.conn.request(subject, body.encode(), timeout=10)))
        assert answers[0]["ok"] is False and answers[0]["error"]["code"] == "payload.invalid", answers
        assert "does not decode as bool" in answers[0]["error"]["message"]
        assert answers[1] == {"ok": True}
        assert await handle.result(timeout=30) == "approval=True"
    assert signal_payloads(watch.events("typed-raw")) == [True]
