"""Workflows of the metrics and trace tests (issue 11), importable by runtime processes
(``perdure worker metrics_workflows``): activities that complete, one that fails its first
attempt and is retried, a durable timer, and a wait for a signal (which lets the execution
leave the cache, so the signal replays it)."""

from __future__ import annotations

from datetime import timedelta

from perdure import ActivityContext, RetryPolicy, activity, sleep, workflow


@activity(timeout=10.0, heartbeat=timedelta(seconds=5))
async def greet(name: str, ctx: ActivityContext) -> str:
    # Declared with a heartbeat: the attempt's first heartbeat goes out as it starts.
    return f"hello {name}"


@activity(timeout=10.0, retry=RetryPolicy(initial_interval=0.1, maximum_attempts=3))
async def flaky(n: int, ctx: ActivityContext) -> int:
    if ctx.attempt == 1:
        raise ValueError("the first attempt fails")
    return n * 2


@workflow
async def greeting(name: str) -> str:
    return await greet(name)


@workflow
async def patient(n: int) -> int:
    await sleep(0.2)
    doubled = await flaky(n)
    go = await workflow.wait_signal("go", type=int)
    return doubled + go


@workflow
async def traced(name: str) -> str:
    """Two activities, one retried: its steps and three attempts all belong to the start's trace."""
    first = await greet(name)
    doubled = await flaky(2)
    return f"{first} {doubled}"


@workflow
async def relay(runs: int) -> str:
    """Greets once per run, continuing as new until ``runs`` is 0: every run in one trace."""
    greeted = await greet(f"run {runs}")
    if runs > 0:
        workflow.continue_as_new(runs - 1)
    return greeted


@workflow
async def family(name: str) -> str:
    """A child workflow (``greeting``), then a child that continues as new (``relay``)."""
    me = workflow.info().execution_id
    first = await greeting(name, id=f"{me}-greeting")
    last = await relay(1, id=f"{me}-relay")
    return f"{first} / {last}"
