"""A workflow that watches an activity's progress (for runtime processes in test_progress)."""

from __future__ import annotations

import asyncio

from perdure import ActivityContext, RetryPolicy, activity, sleep, workflow


@activity(heartbeat=0.5, timeout=30.0, retry=RetryPolicy(initial_interval=0.1, maximum_attempts=3))
async def step_through(n: int, ctx: ActivityContext) -> str:
    start = (ctx.checkpoint or 0) + 1
    for i in range(start, n + 1):
        await asyncio.sleep(0.45)  # the work; longer than the heartbeat throttle (0.8 x 0.5 s)
        await ctx.heartbeat(i)
    return f"stepped {n}"


@workflow
async def watch_steps(n: int) -> dict[str, object]:
    handle = step_through.start(n)
    seen = [details async for details in handle.progress()]
    result = await handle
    await sleep(0.1)  # a decision after the progress, to show replay continues correctly
    return {"seen": seen, "result": result, "after_sleep": True}
