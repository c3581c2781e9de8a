"""Issue 10 item 13: workflow code that blocks (``time.sleep``, a busy loop) fails its step
past the step budget with an error naming the workflow and the line, the execution shows
BLOCKED, and the runtime keeps its leases and keeps completing other workflows meanwhile."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from pathlib import Path

import blocking_workflows
import pytest
from teardown_workflows import SIDE_EFFECTS, noted

from perdure import Client, EmbeddedServer, Settings, Worker
from perdure.client.handle import ExecutionDescription, WorkflowHandle
from perdure.runtime.errors import PerdureError

from support import RuntimeProcess, watch_history

LEASE_TROUBLE = ("partition.retaken", "partition.lost", "ownership.tick_failed")


@pytest.fixture
def side_effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "side-effects.txt"
    monkeypatch.setenv(SIDE_EFFECTS, str(path))
    return path


def _line_of(marker: str) -> int:
    lines = inspect.getsource(blocking_workflows).splitlines()
    return next(number for number, line in enumerate(lines, start=1) if marker in line)


async def _noted(text: str, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while text not in noted():  # noqa: ASYNC110 - a file another process writes has no event
            await asyncio.sleep(0.02)


async def _blocked(handle: WorkflowHandle, timeout: float = 20.0) -> ExecutionDescription:
    async with asyncio.timeout(timeout):
        async for description in handle.watch():
            if description.status == "BLOCKED":
                return description
    raise AssertionError("unreachable")


async def _runtime(nats_server: EmbeddedServer, namespace: str, side_effects: Path) -> RuntimeProcess:
    env = {SIDE_EFFECTS: str(side_effects), "PERDURE_STEP_BUDGET": "1"}
    return await RuntimeProcess(
        nats_server.url, namespace, "budget", targets=("blocking_workflows",), env=env
    ).astart()


async def test_sleep_in_workflow_code_fails_its_step_and_others_go_on(
    nats_server: EmbeddedServer, namespace: str, client: Client, side_effects: Path
) -> None:
    runtime = await _runtime(nats_server, namespace, side_effects)
    try:
        blocker = await client.start(blocking_workflows.sleeps_in_code, 5.0, id="sleeps")
        await _noted("blocking")
        began = time.monotonic()
        quick = [await client.start(blocking_workflows.quick, i, id=f"quick-{i}") for i in range(10)]
        results = await asyncio.gather(*[h.result(timeout=30) for h in quick])
        elapsed = time.monotonic() - began
        assert results == [i + 1 for i in range(10)]
        assert elapsed < 3.0, f"other workflows waited {elapsed:.1f}s for the blocked code"
        description = await _blocked(blocker)
        assert description.error is not None
        message = description.error.message
        assert description.error.code == "workflow.step_budget", message
        assert "sleeps_in_code" in message and "sleeps" in message, message
        assert f"blocking_workflows.py:{_line_of('# BLOCKS')}" in message, message
        await asyncio.sleep(5.0 - (time.monotonic() - began) + 1.5)  # past the sleep, and a lease tick
        output = runtime.output()
        for trouble in LEASE_TROUBLE:
            assert trouble not in output, output
    finally:
        runtime.kill()


async def test_busy_loop_is_interrupted(
    nats_server: EmbeddedServer, namespace: str, client: Client, side_effects: Path
) -> None:
    runtime = await _runtime(nats_server, namespace, side_effects)
    try:
        spinner = await client.start(blocking_workflows.spins, 0, id="spins")
        description = await _blocked(spinner)
        assert description.error is not None
        loop = _line_of("# SPINS")  # the loop's two lines: where the thread was when sampled
        message = description.error.message
        assert any(f"blocking_workflows.py:{line} in spins" in message for line in (loop, loop + 1)), message
        await _noted("interrupted:StepInterrupted")  # the poke ended the loop: its thread is free
        quick = [await client.start(blocking_workflows.quick, i, id=f"quick-{i}") for i in range(5)]
        assert await asyncio.gather(*[h.result(timeout=30) for h in quick]) == [1, 2, 3, 4, 5]
        for trouble in LEASE_TROUBLE:
            assert trouble not in runtime.output()
    finally:
        runtime.kill()


async def test_a_query_whose_replay_overruns_leaves_nothing_half_loaded(
    settings: Settings, client: Client
) -> None:
    """A query replays a dropped execution; the replay runs past the budget: the query gets
    the error, and the next message replays again instead of finding a half-loaded actor
    (which took it for a message to an unknown execution and dropped it)."""
    quick = dataclasses.replace(settings, step_budget=0.5)
    workflow_def = blocking_workflows.blocks_first_replay
    async with Worker([workflow_def], settings=quick) as worker:
        async with watch_history(client) as watch:
            handle = await client.start(workflow_def, 1, id="replay-blocks")
            await watch.wait_for(lambda w: bool(w.events("replay-blocks")))
        await worker.wait_quiet()
        assert worker.cached_executions == 0  # waiting for a signal only: dormant, dropped
        with pytest.raises(PerdureError) as caught:
            await handle.query("anything")
        assert caught.value.code == "workflow.step_budget", caught.value
        await handle.signal("add", 41)
        assert await handle.result(timeout=30) == 42
