"""A workflow and activities that log from user code (test_log_context), importable by a
runtime process (``perdure worker log_context_workflows``).

Each activity fails its first attempt (so it is retried) and logs what its context says it
is, so that the test can compare that with the log context the runtime bound.
"""

from __future__ import annotations

import structlog

from perdure import ActivityContext, RetryPolicy, activity, workflow

RETRY = RetryPolicy(initial_interval=0.1, maximum_attempts=2)
user_log = structlog.get_logger("user")


def _attempt(ctx: ActivityContext, x: int) -> int:
    user_log.info(
        "user.activity",
        seen_execution_id=ctx.execution_id,
        seen_activity=ctx.activity,
        seen_activity_id=ctx.activity_id,
        seen_attempt=ctx.attempt,
    )
    if ctx.attempt == 1:
        raise ConnectionResetError("the first attempt fails")
    return x + 1


@activity(heartbeat=5.0, retry=RETRY)  # a heartbeat: never eager, it runs from the work subject
async def remote_flaky(x: int, ctx: ActivityContext) -> int:
    return _attempt(ctx, x)


@activity(retry=RETRY)  # no heartbeat: hosted here, it runs eagerly (local_activities)
async def local_flaky(x: int, ctx: ActivityContext) -> int:
    return _attempt(ctx, x)


@activity(retry=RETRY)  # a sync activity runs in a thread
def sync_flaky(x: int, ctx: ActivityContext) -> int:
    return _attempt(ctx, x)


@workflow
async def logged(own_id: str) -> int:
    user_log.info("user.workflow", seen_execution_id=own_id, where="start")
    a = await remote_flaky(1)
    user_log.info("user.workflow", seen_execution_id=own_id, where="between")
    b = await local_flaky(a)
    c = await sync_flaky(b)
    user_log.info("user.workflow", seen_execution_id=own_id, where="end")
    return c


@workflow
async def renewed(runs: int) -> int:
    """Its second run logs too: that line carries ``run`` 2."""
    info = workflow.info()
    user_log.info("user.workflow", seen_execution_id=info.execution_id, seen_run=info.run, where="renewed")
    if info.run < runs:
        workflow.continue_as_new(runs)
    return info.run
