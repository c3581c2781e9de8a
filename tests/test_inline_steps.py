"""InlineSteps (actors/inline_steps.py): steps run on the event loop's thread; one that runs
past the slice is interrupted (a busy loop and a blocking sleep alike) and reported as
``SliceExceeded``; an interruption never reaches anything but the step it was meant for."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from perdure.actors.inline_steps import InlineSteps, SliceExceeded
from perdure.actors.workflow_threads import StepInterrupted

SLICE = 0.1


@pytest.fixture
def inline() -> InlineSteps:
    steps = InlineSteps(SLICE)
    assert steps.available()  # pytest runs the tests' event loop on the main thread
    return steps


async def test_a_step_runs_on_the_loop_thread(inline: InlineSteps) -> None:
    assert inline.run(threading.get_ident) == threading.get_ident()

    def fails() -> None:
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        inline.run(fails)


async def test_a_busy_step_is_interrupted(inline: InlineSteps) -> None:
    seen: list[str] = []

    def spin() -> None:
        try:
            while True:
                pass
        except BaseException as exc:
            seen.append(type(exc).__name__)
            raise

    began = time.monotonic()
    with pytest.raises(SliceExceeded):
        inline.run(spin)
    assert time.monotonic() - began < 2.0  # not the 5 s sleep, nor an endless spin
    assert seen == [StepInterrupted.__name__]


async def test_a_blocking_sleep_is_interrupted_and_a_swallowed_interruption_still_counts(
    inline: InlineSteps,
) -> None:
    def sleeps_and_swallows() -> str:
        try:
            time.sleep(5)
        except BaseException:
            return "carried on"  # the step's outcome is not its own any more
        return "slept"

    began = time.monotonic()
    with pytest.raises(SliceExceeded):
        inline.run(sleeps_and_swallows)
    assert time.monotonic() - began < 2.0  # not the 5 s sleep, nor an endless spin


async def test_interruptions_reach_only_the_step_they_were_meant_for(inline: InlineSteps) -> None:
    """Steps that end around the slice: each outcome is the step's own result or
    SliceExceeded, never a stray StepInterrupted, and later steps run undisturbed."""

    def near_slice(i: int) -> int:
        end = time.perf_counter() + SLICE * (0.5 + (i % 4) * 0.25)
        while time.perf_counter() < end:
            pass
        return i

    for i in range(16):
        with contextlib.suppress(SliceExceeded):
            assert inline.run(lambda i=i: near_slice(i)) == i
    assert inline.run(lambda: "still fine") == "still fine"
