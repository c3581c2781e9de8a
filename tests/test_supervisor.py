"""Unit tests of the task scope (runtime/supervisor.py): awaited start, bounded stop, the typed
"closed" error, nesting, and what one failing child does. No NATS needed."""

from __future__ import annotations

import asyncio
import time

import pytest

from perdure.runtime.errors import PerdureError, ScopeClosed
from perdure.runtime.supervisor import Ready, Supervisor


async def test_start_returns_once_the_task_is_ready_and_it_keeps_running() -> None:
    scope = Supervisor("test")
    steps: list[str] = []
    release = asyncio.Event()

    async def serve(ready: Ready) -> None:
        steps.append("setup")
        await asyncio.sleep(0)  # readiness comes after a suspension, not at spawn
        ready()
        steps.append("ready")
        await release.wait()
        steps.append("done")

    task = await scope.start(serve, name="serve")
    assert steps == ["setup", "ready"]
    assert not task.done() and scope.running == 1
    release.set()
    await task
    assert steps == ["setup", "ready", "done"]
    assert scope.running == 0


async def test_start_raises_the_startup_error_and_the_scope_is_not_failed() -> None:
    scope = Supervisor("test")

    async def broken(ready: Ready) -> None:
        await asyncio.sleep(0)
        raise ValueError("no consumer")

    with pytest.raises(ValueError, match="no consumer"):
        await scope.start(broken, name="broken", critical=True)
    assert scope.failure is None and not scope.failed.is_set()
    assert scope.running == 0


async def test_a_failure_after_ready_is_the_scopes_when_critical() -> None:
    scope = Supervisor("test")
    fail = asyncio.Event()

    async def loop(ready: Ready) -> None:
        ready()
        await fail.wait()
        raise ValueError("intake died")

    await scope.start(loop, name="intake", critical=True)
    fail.set()
    await asyncio.wait_for(scope.failed.wait(), 1.0)
    assert isinstance(scope.failure, ValueError)


async def test_spawn_on_a_stopped_scope_raises_scope_closed_and_never_runs_the_coroutine() -> None:
    scope = Supervisor("test")
    assert await scope.stop(timeout=1.0)
    ran = False

    async def work() -> None:
        nonlocal ran
        ran = True

    coro = work()
    with pytest.raises(ScopeClosed) as caught:
        scope.spawn(coro, name="late")
    assert isinstance(caught.value, PerdureError) and caught.value.code == "runtime.scope_closed"
    assert not isinstance(caught.value, RuntimeError)
    assert coro.cr_frame is None  # closed, so no "never awaited" warning and no run
    assert not ran
    with pytest.raises(ScopeClosed):
        scope.child("late")


async def test_stop_is_bounded_by_its_deadline_when_a_task_ignores_cancellation() -> None:
    scope = Supervisor("test")
    stubborn_release = asyncio.Event()

    async def stubborn() -> None:
        while not stubborn_release.is_set():
            try:
                await stubborn_release.wait()
            except asyncio.CancelledError:
                continue  # swallows cancellation (what a misbehaving step might do)

    task = scope.spawn(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    began = time.monotonic()
    assert await scope.stop(timeout=0.2) is False
    took = time.monotonic() - began
    assert 0.2 <= took < 1.0
    assert not task.done()
    stubborn_release.set()
    await task


async def test_stop_cancels_the_tasks_of_child_scopes_and_closes_them() -> None:
    runtime = Supervisor("runtime")
    partition = runtime.child("partition:3")
    assert partition.name == "runtime/partition:3"
    cancelled: list[str] = []

    async def actor(name: str) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    partition.spawn(actor("a"), name="execution:a")
    runtime.spawn(actor("root"), name="ownership")
    await asyncio.sleep(0)
    assert runtime.running == 2 and partition.running == 1
    assert await runtime.stop(timeout=1.0)
    assert sorted(cancelled) == ["a", "root"]
    assert partition.closed
    with pytest.raises(ScopeClosed):
        partition.spawn(actor("b"), name="execution:b")


async def test_stopping_a_child_leaves_its_parent_and_siblings_running() -> None:
    runtime = Supervisor("runtime")
    first, second = runtime.child("partition:1"), runtime.child("partition:2")
    first.spawn(asyncio.Event().wait(), name="execution:x")
    survivor = second.spawn(asyncio.Event().wait(), name="execution:y")
    assert await first.stop(timeout=1.0)
    assert not survivor.done() and not runtime.closed and not second.closed
    assert runtime.running == 1
    await runtime.stop(timeout=1.0)
    assert survivor.cancelled()


async def test_one_failing_child_neither_cancels_its_siblings_nor_fails_the_scope() -> None:
    """Defined behaviour: a non-critical failure (one execution's bug) is logged and stays
    local; a critical one (an intake loop) marks its scope and every owner above as failed,
    without cancelling anything: the owner decides to stop."""
    runtime = Supervisor("runtime")
    partition = runtime.child("partition:0")
    sibling = partition.spawn(asyncio.Event().wait(), name="execution:ok")

    async def boom() -> None:
        raise ValueError("workflow bug")

    failing = partition.spawn(boom(), name="execution:bad")
    await asyncio.wait({failing})
    await asyncio.sleep(0)
    assert not sibling.done()
    assert not partition.failed.is_set() and not runtime.failed.is_set()

    intake = partition.spawn(boom(), name="intake", critical=True)
    await asyncio.wait({intake})
    await asyncio.wait_for(runtime.failed.wait(), 1.0)
    assert isinstance(runtime.failure, ValueError) and partition.failure is runtime.failure
    assert not sibling.done()  # still running: stopping is the owner's decision
    await runtime.stop(timeout=1.0)


async def test_wait_idle_waits_for_work_to_finish_by_itself_within_a_bound() -> None:
    scope = Supervisor("activities")
    done = asyncio.Event()

    async def attempt() -> None:
        await done.wait()

    task = scope.spawn(attempt(), name="activity:x")
    assert await scope.wait_idle(0.05) is False
    assert not task.done()  # not cancelled: waiting is not stopping
    asyncio.get_running_loop().call_later(0.05, done.set)
    assert await scope.wait_idle(2.0) is True
    assert task.done() and not task.cancelled()


async def test_a_cancelled_start_cancels_the_task() -> None:
    scope = Supervisor("test")
    began = asyncio.Event()

    async def slow(ready: Ready) -> None:
        began.set()
        await asyncio.Event().wait()

    starter = asyncio.ensure_future(scope.start(slow, name="slow"))
    await began.wait()
    starter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starter
    await asyncio.sleep(0)
    assert scope.running == 0
