"""Workflows for the workflow-language tests (signals, cancellation, children, continue-as-new),
importable by runtime processes (``perdure worker language_workflows``)."""

from __future__ import annotations

import asyncio

from perdure import ActivityContext, ActivityGone, activity, sleep, workflow

heartbeat_log: list[str] = []  # what the heartbeating activity saw (in-process runtimes only)
activity_gone = asyncio.Event()  # set when a heartbeat told the activity it is no longer wanted
activity_running = asyncio.Event()  # set once the activity has heartbeated: it is really running


@workflow
async def collector(n: int) -> list[str]:
    """Sleeps a little (signals sent meanwhile are kept), then takes ``n`` signals in order."""
    await sleep(0.3)
    return [await workflow.wait_signal("item", type=str) for _ in range(n)]


@activity
async def grind(seconds: float, ctx: ActivityContext) -> str:
    """Heartbeats every 0.2 s until done, or until told it is no longer wanted."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    try:
        while loop.time() < deadline:
            await ctx.heartbeat()
            activity_running.set()
            await asyncio.sleep(0.2)
    except ActivityGone as gone:
        heartbeat_log.append(f"gone cancel_requested={gone.cancel_requested}")
        activity_gone.set()
        raise
    return "ground"


@activity
async def compensate(what: str) -> str:
    heartbeat_log.append(f"compensated {what}")
    return f"undid {what}"


@workflow
async def cancellable(seconds: float) -> str:
    try:
        return await grind(seconds, heartbeat=1.0)
    finally:
        await compensate("grind")


@activity
async def square(x: int) -> int:
    return x * x


@workflow
async def child_square(x: int) -> int:
    return await square(x)


@workflow
async def parent_of_twenty(n: int) -> int:
    results = await asyncio.gather(*[child_square(i) for i in range(n)])
    return sum(results)


@workflow
async def waits_forever(x: int) -> str:
    return await workflow.wait_signal("never", type=str)


@workflow
async def parent_of_sleepers(n: int) -> list[str]:
    return list(
        await asyncio.gather(
            *[waits_forever(i, id=f"{workflow.info().execution_id}-kid{i}") for i in range(n)]
        )
    )


@workflow
async def eternal(state: list[int]) -> int:
    """``state`` is [total iterations wanted, iterations done, iterations per run]."""
    wanted, done, per_run = state
    for _ in range(min(per_run, wanted - done)):
        await sleep(0.001)
        done += 1
    if done >= wanted:
        return done
    workflow.continue_as_new([wanted, done, per_run])


@workflow
async def gate(x: int) -> bool:
    """Opens when enough "add" signals arrived, or gives up after 0.5 s."""
    total = 0

    async def adder() -> None:
        nonlocal total
        while True:
            total += await workflow.wait_signal("add", type=int)

    task = asyncio.ensure_future(adder())
    opened = await workflow.condition(lambda: total >= x, timeout=0.5)
    task.cancel()
    return opened


@workflow
async def long_sleep(seconds: float) -> str:
    await sleep(seconds)
    return "woke"


@workflow
async def tally(n: int) -> int:
    """Counts "add" signals; its running total can be queried at any time."""
    total = 0
    received = 0

    @workflow.query("total")
    def current_total() -> int:
        return total

    @workflow.query("progress")
    def progress(of: int) -> str:
        return f"{received}/{of}"

    while received < n:
        total += await workflow.wait_signal("add", type=int)
        received += 1
    return total
