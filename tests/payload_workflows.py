"""Workflows and activities of the payload-limit and bad-input tests (issue 10, items 1 and 3)."""

from __future__ import annotations

from activity_workflows import tokens

from perdure import ActivityContext, ActivityError, InvalidPayload, activity, make_async, workflow

MB = 1024 * 1024


@workflow
async def measure(text: str) -> int:
    """A workflow that only looks at its input (the runtime-health probe after a refusal)."""
    return len(text)


@activity
async def huge_result(size: int) -> str:
    return "x" * size


@workflow
async def asks_for_huge(size: int) -> str:
    """Asks an activity for ``size`` bytes; says what the activity's failure looked like."""
    try:
        text = await huge_result(size)
    except ActivityError as exc:
        return f"{type(exc).__name__} {exc.type}: {exc.message}"
    return f"got {len(text)}"


@activity
async def huge_checkpoint(size: int, ctx: ActivityContext) -> str:
    await ctx.heartbeat("x" * size)
    return "sent"


@workflow
async def asks_for_huge_checkpoint(size: int) -> str:
    try:
        return await huge_checkpoint(size)
    except ActivityError as exc:
        return f"{type(exc).__name__} {exc.type}: {exc.message}"


@workflow
async def waits_for_bool() -> str:
    """Waits for one ``approval`` signal declared as a bool."""
    answer = await workflow.wait_signal("approval", type=bool)
    return f"approval={answer}"


@workflow(signals={"approval": bool})
async def declares_approval() -> str:
    """Declares its signal's type: a wrong payload is refused when it is sent."""
    answer = await workflow.wait_signal("approval")
    return f"approval={answer!r}"


@workflow
async def sees_bad_signals() -> list[str]:
    """Asks to see undecodable signals: each is an ``InvalidPayload`` from ``wait_signal``."""
    seen: list[str] = []
    while True:
        try:
            answer = await workflow.wait_signal("approval", type=bool, on_invalid="raise")
        except InvalidPayload as exc:
            seen.append(f"{type(exc).__name__}: {exc.message}")
            continue
        seen.append(f"approval={answer!r}")
        return seen


@activity(heartbeat=5.0)
async def held(request: str, ctx: ActivityContext) -> bool:
    """Handed to whoever holds the token; its heartbeats must come within 5 s."""
    tokens(ctx.execution_id).put_nowait(ctx.token)
    return make_async()


@workflow
async def holds(request: str) -> str:
    return "approved" if await held(request) else "rejected"


runs: list[str] = []  # what ``recorded`` ran (in-process runtimes only)


@activity
async def recorded(label: str, ctx: ActivityContext) -> str:
    runs.append(f"{ctx.execution_id}:{label}")
    return label


@workflow
async def records(label: str) -> str:
    return await recorded(label)
