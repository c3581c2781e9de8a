"""The workflow language (issue 4): signals, conditions, cancellation, terminate, timeouts,
child workflows, continue-as-new, start policies, versioning and the replay check."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
from language_workflows import (
    activity_gone,
    activity_running,
    cancellable,
    child_square,
    collector,
    compensate,
    eternal,
    gate,
    grind,
    heartbeat_log,
    long_sleep,
    parent_of_sleepers,
    parent_of_twenty,
    square,
    tally,
    waits_forever,
)

from perdure import (
    Client,
    EmbeddedServer,
    ExecutionAlreadyExists,
    PerdureError,
    Settings,
    Worker,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowTerminated,
)
from perdure.runtime.events import ActivityScheduled, SignalReceived, TimerFired, WorkflowStarted

from support import RuntimeProcess, watch_history


def signals(events: list[object]) -> list[str]:
    return [json.loads(bytes(e.payload)) for e in events if isinstance(e, SignalReceived)]


async def test_signals_before_and_while_waiting_arrive_once(settings: Settings, client: Client) -> None:
    async with Worker([collector], settings=settings), watch_history(client) as watch:
        handle = await client.start(collector, 2, id="collect")
        await handle.signal("item", "early", id="s1")  # before the workflow waits
        await watch.wait_for(lambda w: any(isinstance(e, TimerFired) for e in w.events("collect")))
        await handle.signal("item", "late", id="s2")  # while it waits
        await handle.signal("item", "late", id="s2")  # the same signal again: ignored
        assert await handle.result(timeout=30) == ["early", "late"]
    assert signals(await handle.history()) == ["early", "late"]


async def test_signals_survive_a_runtime_sigkill(
    nats_server: EmbeddedServer, namespace: str, client: Client
) -> None:
    runtime = await RuntimeProcess(
        nats_server.url, namespace, "sig", targets=("language_workflows",)
    ).astart()
    try:
        async with watch_history(client) as watch:
            handle = await client.start(collector, 3, id="collect-kill")
            await handle.signal("item", "one", id="a")
            await watch.wait_for(lambda w: signals(w.events("collect-kill")) == ["one"])
            runtime.kill()
            await handle.signal("item", "two", id="b")  # sent while no runtime runs
            await runtime.astart()
            await handle.signal("item", "three", id="c")
            await handle.signal("item", "two", id="b")  # a retry of an earlier signal
            assert await handle.result(timeout=30) == ["one", "two", "three"]
    finally:
        runtime.kill()
    assert signals(await handle.history()) == ["one", "two", "three"]


async def test_signal_over_plain_nats(
    settings: Settings, client: Client, nats_server: EmbeddedServer
) -> None:
    script = (
        "import asyncio, json, sys, nats\n"
        "async def main():\n"
        "    nc = await nats.connect(sys.argv[1])\n"
        "    for body in sys.argv[3:]:\n"
        "        reply = await nc.request(sys.argv[2], body.encode(), timeout=10)\n"
        "        print(reply.data.decode())\n"
        "    await nc.close()\n"
        "asyncio.run(main())\n"
    )
    async with Worker([collector], settings=settings):
        handle = await client.start(collector, 1, id="plain")
        async for description in handle.watch():
            if description.status == "RUNNING":
                break
        bodies = [
            json.dumps({"execution_id": "plain", "name": "item", "payload": "from-nats", "id": "n1"}),
            json.dumps({"execution_id": "nobody", "name": "item", "payload": 1}),
            "not json",
        ]
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", script, nats_server.url, f"{client.names.namespace}.api.signal", *bodies],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        replies = [json.loads(line) for line in done.stdout.splitlines()]
        assert replies[0] == {"ok": True}
        assert replies[1]["ok"] is False and replies[1]["error"]["code"] == "execution.not_found"
        assert replies[2]["ok"] is False and replies[2]["error"]["code"] == "payload.invalid"
        assert await handle.result(timeout=30) == ["from-nats"]


async def test_cancel_reaches_a_heartbeating_activity_and_runs_compensation(
    settings: Settings, client: Client
) -> None:
    heartbeat_log.clear()
    activity_gone.clear()
    activity_running.clear()
    async with Worker([cancellable, grind, compensate], settings=settings):
        handle = await client.start(cancellable, 30.0, id="cancel-me")
        # Blocked on a heartbeating activity: it runs. (Cancelled before it starts, an
        # attempt is not run at all, and has no heartbeat to raise in.)
        await asyncio.wait_for(activity_running.wait(), 30)
        started = time.monotonic()
        await handle.cancel("changed my mind")
        with pytest.raises(WorkflowCancelled):
            await handle.result(timeout=10)
        await asyncio.wait_for(activity_gone.wait(), 10)  # the activity's next heartbeat raised
        elapsed = time.monotonic() - started
    assert elapsed < 2.0, elapsed
    assert (await handle.describe()).status == "CANCELLED"
    names = [e.name for e in await handle.history() if isinstance(e, ActivityScheduled)]
    assert names == ["grind", "compensate"]
    assert "compensated grind" in heartbeat_log
    assert any(line.startswith("gone cancel_requested=True") for line in heartbeat_log), heartbeat_log


async def test_twenty_children(settings: Settings, client: Client) -> None:
    async with Worker([parent_of_twenty, child_square, square], settings=settings):
        handle = await client.start(parent_of_twenty, 20, id="parent20")
        assert await handle.result(timeout=60) == sum(i * i for i in range(20))
        child = await client.get_handle("parent20-c7").describe()
        assert child.status == "COMPLETED" and child.workflow == "child_square"


async def test_cancelling_the_parent_cancels_running_children(settings: Settings, client: Client) -> None:
    async with Worker([parent_of_sleepers, waits_forever], settings=settings):
        handle = await client.start(parent_of_sleepers, 3, id="mom")
        kids = [client.get_handle(f"mom-kid{i}") for i in range(3)]
        for kid in kids:
            async for description in kid.watch():
                if description.status == "RUNNING":
                    break
        await handle.cancel()
        with pytest.raises(WorkflowCancelled):
            await handle.result(timeout=30)
        for kid in kids:
            with pytest.raises(WorkflowCancelled):
                await kid.result(timeout=30)


async def test_continue_as_new_keeps_history_bounded(settings: Settings, client: Client) -> None:
    async with Worker([eternal], settings=settings):
        handle = await client.start(eternal, [10_000, 0, 1_000], id="eternal")
        assert await handle.result(timeout=300) == 10_000
    description = await handle.describe()
    assert description.run == 10
    steps = await handle.history_steps()
    # Only the last run's history remains: one start and 1,000 sleeps, two steps each.
    assert isinstance(steps[0].inputs[0], WorkflowStarted) and steps[0].inputs[0].run == 10
    assert len(steps) <= 2 * 1_000 + 2, len(steps)


async def test_condition_and_its_timeout(settings: Settings, client: Client) -> None:
    async with Worker([gate], settings=settings):
        opened = await client.start(gate, 5, id="gate-open")
        for value in (2, 3):
            await opened.signal("add", value)
        closed = await client.start(gate, 100, id="gate-closed")
        await closed.signal("add", 1)
        assert await opened.result(timeout=30) is True
        assert await closed.result(timeout=30) is False


async def test_workflow_timeout_and_terminate(settings: Settings, client: Client) -> None:
    async with Worker([long_sleep], settings=settings):
        timed = await client.start(long_sleep, 60.0, id="too-slow", timeout=0.5)
        with pytest.raises(WorkflowFailed) as caught:
            await timed.result(timeout=30)
        assert caught.value.cause is not None and caught.value.cause.code == "workflow.timeout"
        doomed = await client.start(long_sleep, 60.0, id="doomed")
        await doomed.terminate("no longer needed")
        with pytest.raises(WorkflowTerminated, match="no longer needed"):
            await doomed.result(timeout=30)
        assert (await doomed.describe()).status == "TERMINATED"


async def test_start_policies(settings: Settings, client: Client) -> None:
    async with Worker([long_sleep], settings=settings):
        first = await client.start(long_sleep, 0.2, id="policy")
        with pytest.raises(ExecutionAlreadyExists):
            await client.start(long_sleep, 0.2, id="policy", on_conflict="fail")
        same = await client.start(long_sleep, 0.2, id="policy")
        assert same.id == first.id
        assert await first.result(timeout=30) == "woke"
        with pytest.raises(ExecutionAlreadyExists):
            await client.start(long_sleep, 0.2, id="policy", id_reuse="reject")
        unchanged = await client.start(long_sleep, 0.2, id="policy", id_reuse="allow_after_failure")
        assert (await unchanged.describe()).run == 1
        again = await client.start(long_sleep, 0.2, id="policy", id_reuse="allow")
        async for description in again.watch():
            if description.run == 2 and description.status == "COMPLETED":
                break


async def test_queries_read_live_state_without_writing_history(settings: Settings, client: Client) -> None:
    async with Worker([tally], settings=settings), watch_history(client) as watch:
        handle = await client.start(tally, 3, id="tally")
        await handle.signal("add", 5)
        await handle.signal("add", 7)
        await watch.wait_for(lambda w: len(signals_of(w.events("tally"))) == 2)
        before = len(await handle.history())
        assert await handle.query("total") == 12
        assert await handle.query("progress", 3) == "2/3"
        with pytest.raises(PerdureError, match="no query 'nope'"):
            await handle.query("nope")
        assert len(await handle.history()) == before  # queries write nothing
        await handle.signal("add", 1)
        assert await handle.result(timeout=30) == 13
    # Served from replayed state too: a fresh runtime answers for the closed execution.
    async with Worker([tally], settings=settings):
        assert await handle.query("total") == 13


def signals_of(events: list[object]) -> list[object]:
    return [e for e in events if isinstance(e, SignalReceived)]


async def test_waiting_executions_leave_the_cache_and_wake_on_signals(
    settings: Settings, client: Client
) -> None:
    """An execution with nothing of its own due (here: waiting for signals) is not kept in
    memory; a query or a signal replays it where it was."""
    async with Worker([tally], settings=settings) as worker:
        async with watch_history(client) as watch:
            handles = [await client.start(tally, 2, id=f"dormant-{i}") for i in range(20)]
            await watch.wait_for(lambda w: all(w.events(h.id) for h in handles))
        await worker.wait_quiet()
        assert worker.cached_executions == 0
        await handles[0].signal("add", 5)
        assert await handles[0].query("total") == 5
        for handle in handles:
            await handle.signal("add", 1)
        for handle in handles[1:]:
            await handle.signal("add", 2)
        results = await asyncio.gather(*[h.result(timeout=30) for h in handles])
        await worker.wait_quiet()
        assert worker.cached_executions == 0  # closed executions are not kept either
    assert results == [6] + [3] * 19
