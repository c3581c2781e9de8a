"""WorkflowThreads (actors/workflow_threads.py): steps run off the event loop under a budget;
a step past it fails with the line it was at, its thread is poked and replaced, and a poke
never reaches anything but the step it was meant for."""

from __future__ import annotations

import asyncio
import time

import pytest

from perdure.actors.workflow_threads import StepInterrupted, StepOverrun, WorkflowThreads


async def test_results_and_errors_come_back() -> None:
    threads = WorkflowThreads()
    assert await threads.run(lambda: 41 + 1, budget=1.0) == 42

    def fails() -> None:
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        await threads.run(fails, budget=1.0)


async def test_busy_step_fails_at_its_line_and_is_interrupted() -> None:
    threads = WorkflowThreads()
    seen: list[str] = []

    def spin() -> None:
        try:
            while True:  # SPIN
                pass
        except BaseException as exc:
            seen.append(type(exc).__name__)
            raise

    began = time.monotonic()
    with pytest.raises(StepOverrun) as caught:
        await threads.run(spin, budget=0.2)
    assert time.monotonic() - began < 1.0
    assert "test_workflow_threads.py:" in caught.value.where and "in spin" in caught.value.where
    async with asyncio.timeout(5):
        while not seen:  # noqa: ASYNC110 - the poke lands in another thread; nothing to await
            await asyncio.sleep(0.01)
    assert seen == [StepInterrupted.__name__]


async def test_a_blocked_thread_does_not_hold_up_other_steps() -> None:
    threads = WorkflowThreads(threads=1)
    blocked = asyncio.ensure_future(threads.run(lambda: time.sleep(1.5), budget=0.2))
    await asyncio.sleep(0.05)  # let it start
    began = time.monotonic()
    # Queued behind the blocked step, these wait for its budget, then a new thread runs them.
    results = await asyncio.gather(*[threads.run(lambda i=i: i, budget=1.0) for i in range(20)])
    assert results == list(range(20))
    assert time.monotonic() - began < 1.0
    with pytest.raises(StepOverrun, match=r"test_workflow_threads\.py:\d+ in <lambda>"):
        await blocked


async def test_pokes_reach_only_the_step_they_were_meant_for() -> None:
    """Many steps that end right around their budget: every outcome is either the step's own
    result or StepOverrun, never a stray StepInterrupted, and the pool keeps working."""
    threads = WorkflowThreads()

    def near_budget(i: int) -> int:
        end = time.perf_counter() + 0.004 + (i % 3) * 0.001
        while time.perf_counter() < end:
            pass
        return i

    outcomes = await asyncio.gather(
        *[threads.run(lambda i=i: near_budget(i), budget=0.005) for i in range(200)], return_exceptions=True
    )
    for i, outcome in enumerate(outcomes):
        assert outcome == i or isinstance(outcome, StepOverrun), outcome
    assert await threads.run(lambda: "still fine", budget=1.0) == "still fine"


async def test_a_job_of_many_steps_has_the_budget_of_each_step() -> None:
    """A replay runs every step of a history in one hop: the job may take longer than the
    budget as long as each step ends within it; a step that overruns still fails the job."""
    threads = WorkflowThreads()
    begun = [0]

    def replay(slow_step: int | None) -> str:
        for step in range(6):
            begun[0] += 1
            time.sleep(1.5 if step == slow_step else 0.1)  # the step's own work
        return "replayed"

    began = time.monotonic()
    assert await threads.run(lambda: replay(None), budget=0.25, progress=lambda: begun[0]) == "replayed"
    assert time.monotonic() - began > 0.5  # longer than the budget, in steps within it
    with pytest.raises(StepOverrun):
        await threads.run(lambda: replay(2), budget=0.25, progress=lambda: begun[0])
