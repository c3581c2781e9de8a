"""A workflow changed incompatibly: replay stops with NonDeterminismError naming both commands."""

from __future__ import annotations

import asyncio

import pytest

from perdure import (
    ActivityContext,
    Client,
    NonDeterminismError,
    Settings,
    Worker,
    activity,
    make_async,
    workflow,
)
from perdure.runtime.events import ActivityScheduled

from support import watch_history

tokens: asyncio.Queue[str] = asyncio.Queue()


@activity
async def step_a(x: int) -> int:
    return x + 1


@activity
async def step_b(x: int) -> int:
    return x + 2


@activity
async def hold(x: int, ctx: ActivityContext) -> int:
    await tokens.put(ctx.token)
    return make_async()


@workflow(name="evolving")
async def evolving_v1(x: int) -> int:
    y = await step_a(x)
    return await hold(y)


@workflow(name="evolving")
async def evolving_v2(x: int) -> int:
    y = await step_b(x)  # a different first command than the recorded one
    return await hold(y)


async def test_changed_code_is_detected_on_replay(settings: Settings, client: Client) -> None:
    async with watch_history(client) as watch:
        async with Worker([evolving_v1, step_a, step_b, hold], settings=settings):
            handle = await client.start(evolving_v1, 1, id="evolving-1")
            token = await asyncio.wait_for(tokens.get(), 30)
        recorded = await handle.history_steps()
        assert [e.name for s in recorded for e in s.decisions if isinstance(e, ActivityScheduled)] == [
            "step_a",
            "hold",
        ]

        async with Worker([evolving_v2, step_a, step_b, hold], settings=settings):
            with pytest.raises(NonDeterminismError) as caught:
                await client.complete_activity(token, 10)
            async for description in handle.watch():
                if description.status == "BLOCKED":
                    break
    message = str(caught.value)
    assert "ActivityScheduled(seq=1, name='step_a'" in message, message
    assert "ActivityScheduled(seq=1, name='step_b'" in message, message
    assert description.error is not None and description.error.message == message
    # The history is untouched: nothing was appended after the change.
    assert len(await handle.history_steps()) == len(recorded) == len(watch.steps["evolving-1"])
