"""Workflows that block the thread they run on (test_step_budget), importable by runtime
processes (``perdure worker blocking_workflows``)."""

from __future__ import annotations

import time

from teardown_workflows import note

from perdure import activity, workflow


@activity
async def increment(n: int) -> int:
    return n + 1


@workflow
async def quick(n: int) -> int:
    return await increment(n)


@workflow
async def sleeps_in_code(seconds: float) -> str:
    note("blocking")
    time.sleep(seconds)  # noqa: ASYNC251  # BLOCKS: a plain sleep in workflow code holds its thread
    return "woke"


@workflow
async def spins(n: int) -> str:
    note("spinning")
    try:
        while True:  # SPINS: a busy loop in workflow code never yields
            n += 1
    except BaseException as exc:
        note(f"interrupted:{type(exc).__name__}")
        raise


_replays_blocked: list[int] = []


@workflow
async def blocks_first_replay(n: int) -> int:
    """Its first replays in this process block (as code that is slow only on replay would):
    the first is interrupted inline (actors/inline_steps.py), the second, in a workflow
    thread, runs past the step budget."""
    if workflow.is_replaying() and len(_replays_blocked) < 2:
        _replays_blocked.append(1)
        time.sleep(2.0)  # noqa: ASYNC251
    return n + await workflow.wait_signal("add", type=int)
