"""A finished workflow's instance is freed by reference counting as its actor drops it, not
left to the cyclic garbage collector (``WorkflowInstance._tear_down`` breaks the cycles
through it). Left as cycles, about 30 objects per workflow piled up until a collection: a
pause of ~60 ms at the daemon's thresholds, in the middle of whatever ran then."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from perdure import Client, Settings, Worker
from perdure.actors.activity_machine import ActivityState
from perdure.actors.decisions import Decisions
from perdure.actors.instance import WorkflowInstance
from perdure.actors.replay_loop import ReplayLoop

from workflows import runtime_name, sleeper, spread

INSTANCE_PARTS = (WorkflowInstance, ReplayLoop, Decisions, ActivityState)


@pytest.fixture
def collector_off() -> Iterator[None]:
    """The cyclic collector stays off while workflows run (what it would free is what we look
    for), and on again afterwards."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def cyclic_garbage() -> list[object]:
    """What only the cyclic collector would free now (kept in ``gc.garbage`` to be looked at)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    gc.set_debug(0)
    found = list(gc.garbage)
    gc.garbage.clear()
    return found


async def test_finished_workflows_leave_no_instance_in_reference_cycles(
    settings: Settings, client: Client, collector_off: None
) -> None:
    async with Worker([spread, runtime_name, sleeper], settings=settings) as worker:
        handles = [await client.start(spread, i) for i in range(5)]
        handles += [await client.start(sleeper, 0.05) for _ in range(5)]
        for handle in handles:
            await handle.result(timeout=30)
        await worker.wait_quiet()
        assert worker.cached_executions == 0  # every instance was dropped (torn down)
        parts = [type(o).__name__ for o in cyclic_garbage() if isinstance(o, INSTANCE_PARTS)]
    assert parts == []
