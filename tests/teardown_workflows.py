"""Workflows whose ``finally`` blocks have side effects (test_teardown), importable by runtime
processes (``perdure worker teardown_workflows``).

Each side effect appends a line to the file named by ``PERDURE_TEST_SIDE_EFFECTS``, so a test
can tell exactly which user code ran, in this process or in a runtime process.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from perdure import activity, sleep, workflow

SIDE_EFFECTS = "PERDURE_TEST_SIDE_EFFECTS"


def _replaying() -> bool:
    try:
        return workflow.is_replaying()
    except Exception:
        return False  # outside any workflow: a coroutine closed by the garbage collector


def note(text: str) -> None:
    """A plain side effect, as careless workflow code might have in a ``finally``; guarded
    by ``is_replaying()`` as the README asks, so each line is written once per real run."""
    path = os.environ.get(SIDE_EFFECTS)
    if path and not _replaying():
        with open(path, "a") as out:
            out.write(text + "\n")


def noted() -> list[str]:
    path = os.environ.get(SIDE_EFFECTS)
    if not path or not os.path.exists(path):
        return []
    with open(path) as lines:
        return [line.rstrip("\n") for line in lines]


@activity
async def record(text: str) -> str:
    note(f"activity:{text}")
    return text


@workflow
async def guarded(n: int) -> str:
    """Waits for the signal ``go``; its ``finally`` has a plain side effect and an activity."""
    try:
        await workflow.wait_signal("go")
        return f"done-{n}"
    finally:
        note(f"finally:{n}")
        await record(f"cleanup-{n}")


@workflow
async def guarded_sleep(seconds: float) -> str:
    """Waits on a durable timer (so it stays cached: not dormant), then cleans up."""
    name = workflow.info().execution_id
    try:
        await sleep(seconds)
        return f"slept-{name}"
    finally:
        note(f"finally:{name}")
        await record(f"cleanup-{name}")


async def _values(n: int, name: str) -> AsyncIterator[int]:
    try:
        for _ in range(n):
            yield await workflow.wait_signal("value", type=int)
    finally:
        note(f"agen-finally:{name}")


@workflow
async def summed(n: int) -> int:
    """Adds ``n`` signalled values, read through an async generator with a ``finally``."""
    name, total = workflow.info().execution_id, 0
    try:
        async for value in _values(n, name):
            total += value
        return total
    finally:
        note(f"finally:{name}")
