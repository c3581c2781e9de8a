"""Issue 13 item 4: every task has an owner scope, named in the task's name, and a runtime's
stop leaves none of its tasks behind; the activity drain waits for the activity host's scope."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

from perdure import Client, RetryPolicy, Settings, Worker, activity, workflow
from perdure.runtime.supervisor import Supervisor

_GATE: dict[str, asyncio.Event] = {}
_ENTERED: dict[str, asyncio.Event] = {}


def _gate(key: str) -> asyncio.Event:
    return _GATE.setdefault(key, asyncio.Event())


def _entered(key: str) -> asyncio.Event:
    return _ENTERED.setdefault(key, asyncio.Event())


@activity(timeout=timedelta(seconds=30), retry=RetryPolicy(maximum_attempts=1))
async def held(key: str) -> str:
    _entered(key).set()
    await _gate(key).wait()
    return f"released {key}"


@workflow
async def holds(key: str) -> str:
    return await held(key)


def _owned_task_names(runtime: str) -> set[str]:
    prefix = f"runtime:{runtime}"
    return {t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(prefix) and not t.done()}


async def test_task_names_carry_their_owner_scope_and_stop_leaves_none(
    settings: Settings, client: Client
) -> None:
    name = f"own-{settings.namespace[-6:]}"
    mine = dataclasses.replace(settings, name=name, partitions=2, eager_activities=False)
    worker = Worker([holds, held], settings=mine)
    await worker.start()
    try:
        key = f"names-{settings.namespace}"
        await client.start(holds, key, id=key)
        await asyncio.wait_for(_entered(key).wait(), 20)
        names = _owned_task_names(name)
        for p in worker.owned_partitions:
            assert f"runtime:{name}/partition:{p}:consume" in names, names
        assert f"runtime:{name}/activities:activity:held" in names, names
        assert f"runtime:{name}/activities:activities:held" in names, names
        assert f"runtime:{name}:ownership" in names, names
        _gate(key).set()
    finally:
        await worker.stop()
    assert _owned_task_names(name) == set()


async def test_stop_waits_for_a_running_attempt_in_the_activity_scope(
    settings: Settings, client: Client
) -> None:
    """The drain finds the attempt through the activity host's scope (no task-name prefix):
    an attempt that ends within the grace reports its result before the runtime is gone."""
    mine = dataclasses.replace(settings, partitions=1, eager_activities=False)
    key = f"drain-{settings.namespace}"
    worker = Worker([holds, held], settings=mine)
    await worker.start()
    try:
        handle = await client.start(holds, key, id=key)
        await asyncio.wait_for(_entered(key).wait(), 20)
        asyncio.get_running_loop().call_later(0.3, _gate(key).set)
    finally:
        await worker.stop()
    assert _gate(key).is_set()
    async with Worker([holds, held], settings=mine):
        # Its result is in the inbox: the next runtime only has to take the step.
        assert await handle.result(timeout=20) == f"released {key}"


async def test_spawning_on_a_stopped_runtime_raises_scope_closed(settings: Settings) -> None:
    from perdure.runtime.errors import ScopeClosed

    worker = Worker([holds, held], settings=dataclasses.replace(settings, partitions=1))
    await worker.start()
    supervisor: Supervisor = worker.services.supervisor
    await worker.stop()
    coro = asyncio.sleep(0)
    try:
        supervisor.spawn(coro, name="late")
    except ScopeClosed:
        pass
    else:  # pragma: no cover - the failure this test exists for
        raise AssertionError("a stopped runtime accepted a task")
