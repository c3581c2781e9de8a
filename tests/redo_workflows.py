"""Workflows of the redo tests (tests/test_redo.py), importable by runtime processes.

Every activity appends one line per run to a side-effect log (``PERDURE_TEST_RUN_LOG``), so
a test counts how often each one really ran, whatever history says. ``gate`` runs until the
file ``PERDURE_TEST_GATE`` exists; in-process tests open it with ``open_gate()``.
"""

from __future__ import annotations

import asyncio
import os

from perdure import ActivityContext, RetryPolicy, activity, make_async, workflow

_OPEN = asyncio.Event()


def record(line: str) -> None:
    path = os.environ.get("PERDURE_TEST_RUN_LOG")
    if path:
        with open(path, "a") as log:  # O_APPEND: whole lines from concurrent writers
            log.write(line + "\n")


def runs(path: str) -> list[str]:
    with open(path) as log:
        return log.read().splitlines()


def open_gate() -> None:
    _OPEN.set()


def close_gate() -> None:
    _OPEN.clear()


@activity  # no timeouts: nothing but the runtime's own recovery runs these again
async def step(x: str) -> str:
    record(f"step {x}")
    return x


@activity
async def gate(x: str) -> str:
    record(f"gate {x}")
    flag = os.environ.get("PERDURE_TEST_GATE")
    if flag:
        while not os.path.exists(flag):  # noqa: ASYNC110 (created by the test process: nothing to await)
            await asyncio.sleep(0.02)
    else:
        await _OPEN.wait()
    record(f"gate-done {x}")
    return x


@activity
async def hand_over(x: str, ctx: ActivityContext) -> str:
    record(f"token {x} {ctx.token}")
    return make_async()


@workflow
async def chain(n: int) -> list[str]:
    """Two activities one after the other, then a gate and a token handed over together:
    with eager attempts, the start message stays unacked until the gate's outcome is in
    history, so a crash before that delivers it again after both steps closed."""
    a = await step(f"{n}.a")
    b = await step(f"{n}.b")
    got = await asyncio.gather(gate(f"{n}.g"), hand_over(f"{n}.h"))
    return [a, b, *got]


def chain_expected(n: int, answer: str) -> list[str]:
    return [f"{n}.a", f"{n}.b", f"{n}.g", answer]


@workflow
async def tally_awake(n: int) -> int:
    """Counts ``n`` "add" signals; each wait has a timer due soon, so the execution stays
    cached between signals (it is never dormant)."""
    total = 0
    for _ in range(n):
        total += await asyncio.wait_for(workflow.wait_signal("add", type=int), timeout=25)
    return total


@workflow
async def leave_running(n: int) -> str:
    """Starts a gate and hands a token over, then ends on a signal without awaiting either:
    the start message stays unacked (the eager gate runs on) after the execution completed."""
    running = [asyncio.ensure_future(gate(f"{n}.g")), asyncio.ensure_future(hand_over(f"{n}.h"))]
    await workflow.wait_signal("done", type=str)
    del running
    return "done"


@activity(timeout=1.0, retry=RetryPolicy(initial_interval=30.0, maximum_attempts=0))
async def late_answer(x: str, ctx: ActivityContext) -> str:
    """Hands its token over and times out after 1 s; the retry waits 30 s."""
    record(f"answer {x}.{ctx.attempt} {ctx.token}")
    return make_async()


@workflow
async def answered(n: int) -> str:
    return await late_answer(f"{n}")
