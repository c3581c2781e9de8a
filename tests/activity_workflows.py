"""Workflows and activities of the activity tests (issue 3).

In-process tests get tokens through ``tokens(execution_id)``, a queue the async activities
put ``ctx.token`` on. Runtime processes (``perdure worker activity_workflows:count_to``)
report their progress through heartbeats, which the tests watch on the timers bucket.
"""

from __future__ import annotations

import asyncio
import collections
from datetime import timedelta

import msgspec

from perdure import (
    ActivityContext,
    ActivityError,
    ActivityGone,
    ActivityTimeout,
    HeartbeatTimeout,
    RetryPolicy,
    activity,
    make_async,
    workflow,
)

_TOKENS: dict[str, asyncio.Queue[str]] = collections.defaultdict(asyncio.Queue)


def tokens(execution_id: str) -> asyncio.Queue[str]:
    """The tokens the async activities of ``execution_id`` handed out, in order."""
    return _TOKENS[execution_id]


# ----------------------------------------------------------------- async completion


# Asked once: a refusal (fail) or a timeout is the answer, not a reason to ask again.
@activity(timeout=timedelta(days=7), retry=RetryPolicy(maximum_attempts=1))
async def approve(request: str, ctx: ActivityContext) -> bool:
    """Finished later by whoever holds the token (the test, a nats-py process)."""
    tokens(ctx.execution_id).put_nowait(ctx.token)
    return make_async()


@workflow
async def approval(request: str) -> str:
    try:
        approved = await approve(request)
    except ActivityError as exc:
        return f"{type(exc).__name__} {exc.type}: {exc.message}"
    return "approved" if approved else "rejected"


@workflow
async def late_answer(request: str) -> str:
    """The first approval times out; the second, with no timeout, decides the outcome."""
    try:
        await approve(request, timeout=0.5)
    except ActivityTimeout as exc:
        first = f"{type(exc).__name__}"
    else:
        first = "no timeout"
    second = await approve(request)
    return f"{first}, then {'approved' if second else 'rejected'}"


# --------------------------------------------------------------------- heartbeats


class CountJob(msgspec.Struct, frozen=True):
    n: int
    delay: float
    retry: bool = False


class Counted(msgspec.Struct, frozen=True):
    attempt: int
    began_at: int | None  # ctx.checkpoint when the attempt began
    total: int


@activity(heartbeat=2.0, timeout=60.0)
async def count_to(job: CountJob, ctx: ActivityContext) -> Counted:
    """Counts items ``checkpoint .. n``, heartbeating the number done after each one."""
    began_at = ctx.checkpoint
    done = began_at or 0
    while done < job.n:
        await asyncio.sleep(job.delay)  # one item's work
        done += 1
        await ctx.heartbeat(done)
    return Counted(attempt=ctx.attempt, began_at=began_at, total=done)


@workflow
async def counting(job: CountJob) -> Counted | str:
    """The count's result; or, without retries, the heartbeat timeout and when it was seen."""
    retry = RetryPolicy(initial_interval=0.5, maximum_attempts=3 if job.retry else 1)
    try:
        return await count_to(job, retry=retry)
    except HeartbeatTimeout as exc:
        return f"{exc.type} at {workflow.time():.3f}"


@activity(heartbeat=1.0)
async def steady(beats: int, ctx: ActivityContext) -> int:
    """Heartbeats every 0.2 s, ``beats`` times (10 s for 50)."""
    for i in range(beats):
        await asyncio.sleep(0.2)
        await ctx.heartbeat(i)
    return beats


@workflow
async def steady_job(beats: int) -> int:
    return await steady(beats)


# ----------------------------------------------------------- abandoned activities

GONE: dict[str, asyncio.Queue[ActivityGone]] = collections.defaultdict(asyncio.Queue)


@activity(heartbeat=1.0)
async def stubborn(x: int, ctx: ActivityContext) -> int:
    """Heartbeats until told it is no longer wanted; reports the ``ActivityGone`` it got."""
    tokens(ctx.execution_id).put_nowait(ctx.token)
    try:
        while True:
            await asyncio.sleep(0.05)
            await ctx.heartbeat(x)
    except ActivityGone as exc:
        GONE[ctx.execution_id].put_nowait(exc)
        raise


@workflow
async def impatient(x: int) -> str:
    try:
        await asyncio.wait_for(stubborn(x), timeout=0.5)
    except TimeoutError:
        return "gave up"
    return "finished"


# ------------------------------------------------------------- how attempts end


@activity(timeout=30.0, retry=RetryPolicy(maximum_attempts=1))  # the test checks how attempt 1 ends
async def call_partner(x: int) -> int:
    """The partner's own timeout: an ordinary failure, not the activity's timeout."""
    raise TimeoutError(f"partner did not answer request {x}")


@workflow
async def partner(x: int) -> str:
    try:
        await call_partner(x)
    except ActivityError as exc:
        return f"{type(exc).__name__} {exc.type}: {exc.message}"
    return "answered"


@activity(heartbeat=2.0, retry=RetryPolicy(initial_interval=0.1, maximum_attempts=2))
async def flaky_batch(n: int, ctx: ActivityContext) -> list[int | None]:
    """Attempt 1 heartbeats 1..n at once (throttled: only the first reaches the server
    straight away), then fails; attempt 2 says which checkpoint it was given."""
    if ctx.attempt == 1:
        for i in range(1, n + 1):
            await ctx.heartbeat(i)
        raise ConnectionResetError("partner reset the connection")
    return [ctx.attempt, ctx.checkpoint]


@workflow
async def batch(n: int) -> list[int | None]:
    return await flaky_batch(n)


# ------------------------------------------------------------- queued attempts


@activity(heartbeat=1.0)
async def after_a_queue(work: float, ctx: ActivityContext) -> int:
    """Works ``work`` seconds before its first heartbeat (less than the heartbeat timeout)."""
    await asyncio.sleep(work)
    await ctx.heartbeat("halfway")
    return ctx.attempt


@workflow
async def queued(work: float) -> str:
    try:
        return f"done on attempt {await after_a_queue(work)}"
    except HeartbeatTimeout as exc:
        return f"{exc.type}: {exc.message}"


@activity(heartbeat=1.0)
async def eager(x: int, ctx: ActivityContext) -> int:
    """Heartbeats the moment it starts (the ActivityActor itself beats just before)."""
    await ctx.heartbeat(x)
    return x


@workflow
async def eager_job(x: int) -> int:
    try:
        return await eager(x)
    except HeartbeatTimeout:
        return -1


@workflow
async def patient(x: int) -> int:
    return await stubborn(x)
