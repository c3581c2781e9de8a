"""Workflows and activities used by the tests, importable by runtime processes (``perdure worker workflows``)."""

from __future__ import annotations

import asyncio
import os

from perdure import RetryPolicy, activity, sleep, workflow

# Crash tests kill runtimes mid-attempt: a timeout lets the workflow retry the attempt
# instead of waiting for the work item's redelivery.
CRASH_SAFE = {"timeout": 3.0, "retry": RetryPolicy(initial_interval=0.2, maximum_attempts=0)}


@activity(**CRASH_SAFE)
async def double(x: int) -> int:
    return x * 2


@activity(**CRASH_SAFE)
async def runtime_name(x: int) -> str:
    """Which runtime ran this attempt (the test checks every runtime did some work)."""
    await asyncio.sleep(0.01)
    return os.environ.get("PERDURE_NAME", "") + f":{x}"


@workflow
async def pipeline(n: int) -> list[int]:
    """3 sequential activities, a gather of 10, and a 2 s durable sleep."""
    a = await double(n)
    b = await double(a)
    c = await double(b)
    fanned = await asyncio.gather(*[double(n + i) for i in range(10)])
    await sleep(2)
    return [a, b, c, *fanned]


def pipeline_expected(n: int) -> list[int]:
    return [2 * n, 4 * n, 8 * n, *[2 * (n + i) for i in range(10)]]


@workflow
async def busy(n: int) -> int:
    """Short steps for crash tests: sequential and parallel activities and short sleeps."""
    total = 0
    for i in range(3):
        total += await double(n + i)
        await sleep(0.3)
    parts = await asyncio.gather(*[double(i) for i in range(5)])
    return total + sum(parts)


def busy_expected(n: int) -> int:
    return sum(2 * (n + i) for i in range(3)) + sum(2 * i for i in range(5))


@workflow
async def sleeper(seconds: float) -> float:
    """Sleeps, and returns how late the timer fired (workflow time is the step's wall clock)."""
    start = workflow.time()
    await sleep(seconds)
    return workflow.time() - start


@workflow
async def spread(n: int) -> list[str]:
    return list(await asyncio.gather(*[runtime_name(n * 100 + i) for i in range(4)]))


@activity  # no timeout: after a crash only the runtime's own recovery can run it again
async def slow_double(x: int) -> int:
    await asyncio.sleep(0.3)
    return x * 2


@workflow
async def slow_chain(n: int) -> list[int]:
    """Sequential activities without timeouts, then a parallel pair (eager attempts in flight
    for most of the workflow's life)."""
    a = await slow_double(n)
    b = await slow_double(a)
    pair = await asyncio.gather(slow_double(b), slow_double(b + 1))
    return [a, b, *pair]


def slow_chain_expected(n: int) -> list[int]:
    return [2 * n, 4 * n, 8 * n, 2 * (4 * n + 1)]
