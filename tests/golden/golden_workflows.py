"""The workflows whose recorded histories are kept in this folder (``*.jsonl``).

Do not change them: ``test_golden.py`` replays the recorded histories against this code and
the engine as they are now, and a change here would show up as a divergence that is not the
engine's. A new scenario gets a new workflow (and ``make_golden.py`` records it).
"""

from __future__ import annotations

import asyncio

from perdure import ActivityContext, RetryPolicy, activity, sleep, workflow


@activity
async def greet(name: str) -> str:
    return f"hello {name}"


@activity(timeout=10, retry=RetryPolicy(initial_interval=0.1, maximum_attempts=3))
async def flaky(n: int, ctx: ActivityContext) -> int:
    if ctx.attempt < 2:
        raise ValueError(f"attempt {ctx.attempt} fails")
    return n * 2


@workflow
async def golden_activities(name: str) -> list[str]:
    """Sequential calls, a retried failure, a gather, and the workflow's seeded ids."""
    first = await greet(name)
    doubled = await flaky(21)
    pair = await asyncio.gather(greet("left"), greet("right"))
    return [first, str(doubled), *pair, str(workflow.uuid4()), str(workflow.random().randint(0, 10**6))]


@workflow
async def golden_timers(seconds: float) -> list[str]:
    """A durable sleep, a wait_for that times out, and one met in time (its timer cancelled)."""
    await sleep(seconds)
    out = []
    try:
        await asyncio.wait_for(workflow.wait_signal("never"), timeout=seconds)
    except TimeoutError:
        out.append("timed out")
    out.append(await asyncio.wait_for(greet("in time"), timeout=60))
    return out


@workflow
async def golden_signals(expected: int) -> list[int]:
    """Signals waited for in turn, one taken by a task while a condition waits, one buffered."""
    items = [await workflow.wait_signal("item", type=int)]

    async def collect() -> None:
        while True:
            items.append(await workflow.wait_signal("item", type=int))

    collector = asyncio.ensure_future(collect())
    ok = await workflow.condition(lambda: len(items) >= expected, timeout=60)
    collector.cancel()
    await workflow.wait_signal("done")
    return [*items, int(ok)]


@workflow
async def golden_leaf(n: int) -> str:
    return await greet(f"child {n}")


@workflow
async def golden_parent(n: int) -> list[str]:
    """A child workflow (its own history is kept too), then an activity."""
    child = await golden_leaf(n, id=f"{workflow.info().execution_id}-leaf")
    return [child, await greet("parent")]


@workflow
async def golden_continue(n: int) -> int:
    """Three runs under one id: each does an activity, then continues as new."""
    await greet(f"run {n}")
    if n < 3:
        workflow.continue_as_new(n + 1)
    return n


@workflow
async def golden_patched(n: int) -> str:
    """``make_golden.py`` records one history with this code and one with the code before the
    patch (the same name, without the branch); both must replay here."""
    if workflow.patched("louder"):
        await greet("LOUD")
    return await greet(f"patched {n}")
