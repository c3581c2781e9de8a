"""Workflows of the eager-keys tests (actors/eager_keys.py): eager attempts that need no
key, and ones that need their record or a durable timeout. Loaded by runtime processes too
(``perdure worker eager_key_workflows``)."""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable

from perdure import (
    ActivityContext,
    ActivityError,
    RetryPolicy,
    activity,
    make_async,
    workflow,
)

ONCE = RetryPolicy(maximum_attempts=1)
# Per execution: the checkpoint each attempt began at.
CHECKPOINTS: dict[str, list[object]] = collections.defaultdict(list)


@activity(timeout=5.0)
async def add_one(x: int) -> int:
    return x + 1


@workflow
async def count_up(n: int) -> int:
    total = 0
    for _ in range(n):
        total = await add_one(total)
    return total


@activity(timeout=2.0, retry=ONCE)
async def hand_off(request: str, ctx: ActivityContext) -> str:
    """Hands its token to nobody and returns: only its timeout can end it."""
    assert ctx.token
    return make_async()


async def outcome(call: Awaitable[str]) -> str:
    """The activity's result, or the name of the error it ended with."""
    try:
        return await call
    except ActivityError as exc:
        return type(exc).__name__


@workflow
async def handed_off(request: str) -> str:
    return await outcome(hand_off(request))


@activity(timeout=10.0, retry=RetryPolicy(initial_interval=0.05, maximum_attempts=2))
async def resume(n: int, ctx: ActivityContext) -> int:
    """Attempt 1 checkpoints ``n`` with a heartbeat (it has no heartbeat timeout) and fails;
    attempt 2 returns the checkpoint it began at."""
    CHECKPOINTS[ctx.execution_id].append(ctx.checkpoint)
    if ctx.attempt == 1:
        await ctx.heartbeat(n)
        raise RuntimeError("first attempt fails after its checkpoint")
    return int(ctx.checkpoint)


@workflow
async def resumed(n: int) -> int:
    return await resume(n)


@activity(timeout=0.3, retry=ONCE)
def oversleep(seconds: float) -> str:
    """A sync activity (run in a thread, which no timeout can interrupt) past its timeout."""
    time.sleep(seconds)
    return "woke up"


@workflow
async def overslept(seconds: float) -> str:
    return await outcome(oversleep(seconds))
