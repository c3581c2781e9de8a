"""Issue 10 item 1, the workflow side: a result, or an input the workflow passes on
(activity, child, continue-as-new), larger than the payload limit fails the execution or
raises ``PayloadTooLarge`` at the call site, with the error recorded in history; it never
crash-loops the runtime on the history append."""

from __future__ import annotations

import asyncio

import pytest

from perdure import Client, Settings, Worker, activity, workflow
from perdure.runtime.errors import PayloadTooLarge
from perdure.runtime.events import WorkflowFailed
from perdure.runtime.limits import DEFAULT_MAX_PAYLOAD, payload_limit

LIMIT = payload_limit(None)
TOO_BIG = DEFAULT_MAX_PAYLOAD + 50_000  # over the server's max_payload: the append would fail
HALF = 600_000  # two of these do not fit in one step


pytestmark = pytest.mark.usefixtures("bounded_payloads")  # conftest.py: the one-message limit


@activity
async def size_of(data: str) -> int:
    return len(data)


@workflow
async def big_result(n: int) -> str:
    return "x" * n


@workflow
async def big_activity_input(n: int) -> str:
    try:
        await size_of("x" * n)
    except PayloadTooLarge as exc:
        return f"refused {exc.size} > {exc.limit}"
    return "sent"


@workflow
async def two_halves(n: int) -> str:
    first = size_of.start("a" * n)
    try:
        size_of.start("b" * n)  # the same step: together they do not fit in one message
    except PayloadTooLarge:
        return f"second refused, first gave {await first}"
    return "both sent"


@workflow
async def length(text: str) -> int:
    return len(text)


@workflow
async def big_child_input(n: int) -> str:
    try:
        await length("x" * n)
    except PayloadTooLarge:
        return "child refused"
    return "child started"


@workflow
async def big_continue(text: str) -> str:
    if text == "go":
        workflow.continue_as_new("x" * TOO_BIG)
    return "never"


@workflow
async def small(n: int) -> int:
    return await size_of("y" * n)


ALL = [size_of, big_result, big_activity_input, two_halves, length, big_child_input, big_continue, small]


async def _failed_with(client: Client, workflow_def: object, arg: object, execution_id: str) -> str:
    handle = await client.start(workflow_def, arg, id=execution_id)
    with pytest.raises(Exception) as caught:
        await handle.result(timeout=30)
    description = await handle.describe()
    assert description.status == "FAILED", description
    assert description.error is not None and description.error.code == "payload.too_large", description
    events = await handle.history()
    assert isinstance(events[-1], WorkflowFailed) and events[-1].error.code == "payload.too_large"
    return str(caught.value)


async def test_too_large_result_fails_the_execution(settings: Settings, client: Client) -> None:
    async with Worker(ALL, settings=settings):
        message = await _failed_with(client, big_result, TOO_BIG, "big-result")
        assert "result of workflow 'big_result'" in message and str(LIMIT) in message
        assert await (await client.start(small, 3, id="after")).result(timeout=30) == 3


async def test_too_large_inputs_raise_at_the_call_site(settings: Settings, client: Client) -> None:
    async with Worker(ALL, settings=settings):
        handle = await client.start(big_activity_input, TOO_BIG, id="big-input")
        assert await handle.result(timeout=30) == f"refused {TOO_BIG + 2} > {LIMIT}"  # + the JSON quotes
        handle = await client.start(two_halves, HALF, id="halves")
        assert await handle.result(timeout=30) == f"second refused, first gave {HALF}"
        handle = await client.start(big_child_input, TOO_BIG, id="big-child")
        assert await handle.result(timeout=30) == "child refused"
        await _failed_with(client, big_continue, "go", "big-continue")
        results = await asyncio.gather(
            *[(await client.start(small, i, id=f"s{i}")).result(30) for i in range(3)]
        )
        assert results == [0, 1, 2]
