"""Workflows the CLI tests drive (``perdure worker cli_workflows`` in a child process)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from perdure import ActivityContext, ActivityError, RetryPolicy, activity, make_async, workflow


@workflow
async def greet(name: str) -> str:
    return f"hello {name}"


@workflow
async def boom(message: str) -> str:
    raise ValueError(message)


@workflow
async def gatekeeper(label: str) -> str:
    """Waits for signal "open"; query "state" tells what it is waiting for."""
    state = "waiting"

    @workflow.query("state")
    def current(prefix: str = "") -> str:
        return prefix + state

    key = await workflow.wait_signal("open", type=str)
    state = "opened"
    return f"{label} opened with {key}"


@activity(timeout=timedelta(days=1), retry=RetryPolicy(maximum_attempts=1))
async def hand_out(path: str, ctx: ActivityContext) -> str:
    """Writes its token to ``path`` (the test reads it) and waits to be completed."""
    Path(path).write_text(ctx.token)
    return make_async()


@workflow
async def by_token(path: str) -> str:
    try:
        return "completed with " + await hand_out(path)
    except ActivityError as exc:
        return f"failed {exc.type}: {exc.message}"
