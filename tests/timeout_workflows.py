"""Workflows and activities of the timeout, recovery and default-retry tests (issue 10, items
9, 10, 11, 14). Runtime processes load them as ``perdure worker timeout_workflows``."""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import threading
import time

import msgspec

from perdure import (
    ActivityContext,
    ActivityError,
    ActivityGone,
    ActivityTimeout,
    RetryPolicy,
    activity,
    workflow,
)

NO_RETRY = RetryPolicy(maximum_attempts=1)

# ------------------------------------------------------- item 10: timeout is start to close


@activity(timeout=2.0, retry=NO_RETRY)
async def takes_1_2_s(x: int) -> int:
    await asyncio.sleep(1.2)
    return x


@workflow
async def queued_step(x: int) -> str:
    try:
        return f"ok {await takes_1_2_s(x)}"
    except ActivityTimeout as exc:
        return f"ActivityTimeout: {exc.message}"


@activity(timeout=30.0, retry=NO_RETRY)
async def holds_the_slot(seconds: float, ctx: ActivityContext) -> float:
    print(f"HOLDING {ctx.execution_id}", file=sys.stderr, flush=True)
    await asyncio.sleep(seconds)
    return seconds


@workflow
async def waits_for_a_slot(seconds: float) -> str:
    try:
        return f"ok {await holds_the_slot(seconds, schedule_to_start=0.5)}"
    except ActivityTimeout as exc:
        return f"ActivityTimeout: {exc.message}"


# ------------------------------------------------- item 9: recovery at lease speed


class Stuck(msgspec.Struct, frozen=True):
    flag: str  # a file: the first run creates it and hangs; any later run returns at once


@activity(timeout=600.0, retry=RetryPolicy(initial_interval=0.1, maximum_attempts=3))
async def stuck_once(job: Stuck, ctx: ActivityContext) -> float:
    """Hangs the first time it runs (the test SIGKILLs that runtime); a later run returns
    the time it started."""
    try:
        os.close(os.open(job.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # atomic: first run only
    except FileExistsError:
        return time.time()
    else:
        print(f"STUCK_STARTED pid={os.getpid()} attempt={ctx.attempt}", file=sys.stderr, flush=True)
        await asyncio.sleep(3600)
        return 0.0


@workflow
async def recovering(job: Stuck) -> float:
    return await stuck_once(job)


# ------------------------------------------------------------ item 11: default retries

FAILURES: collections.Counter[str] = collections.Counter()


@activity
async def fails_twice(key: str, ctx: ActivityContext) -> int:
    """No retry policy declared: fails on attempts 1 and 2, succeeds on 3."""
    if ctx.attempt < 3:
        FAILURES[key] += 1
        raise ConnectionError(f"transient failure {ctx.attempt}")
    return ctx.attempt


@workflow
async def default_retries(key: str) -> int:
    return await fails_twice(key)


@workflow
async def explicit_no_retry(key: str) -> str:
    try:
        return str(await fails_twice(key, retry=NO_RETRY))
    except ActivityError as exc:
        return f"{type(exc).__name__} {exc.type}: {exc.message}"


# ------------------------------------------------------ item 14: sync activities heartbeat

SYNC_GONE: dict[str, list[ActivityGone]] = collections.defaultdict(list)
SYNC_DONE: dict[str, threading.Event] = collections.defaultdict(threading.Event)


@activity(heartbeat=1.0)
def sync_stubborn(x: int, ctx: ActivityContext) -> int:
    """A sync activity (runs in a thread) that heartbeats until told it is no longer wanted."""
    try:
        for _ in range(200):  # 10 s at most: a heartbeat that does nothing must not hang the test
            time.sleep(0.05)
            ctx.heartbeat(x)
    except ActivityGone as exc:
        SYNC_GONE[ctx.execution_id].append(exc)
        raise
    finally:
        SYNC_DONE[ctx.execution_id].set()
    return x


@workflow
async def sync_impatient(x: int) -> str:
    try:
        await asyncio.wait_for(sync_stubborn(x), timeout=0.5)
    except TimeoutError:
        return "gave up"
    return "finished"


@activity(heartbeat=2.0, retry=RetryPolicy(initial_interval=0.1, maximum_attempts=2))
def sync_flaky(n: int, ctx: ActivityContext) -> list[int | None]:
    """Attempt 1 checkpoints ``n`` then fails; attempt 2 says which checkpoint it was given."""
    if ctx.attempt == 1:
        ctx.heartbeat(n)
        raise ConnectionResetError("partner reset the connection")
    return [ctx.attempt, ctx.checkpoint]


@workflow
async def sync_batch(n: int) -> list[int | None]:
    return await sync_flaky(n)
