"""The durable core (issue 2): workflows, history, replay, idempotent start, clear errors."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from perdure import Client, InvalidPayload, RetryPolicy, Settings, Worker, activity, make_async, workflow
from perdure.runtime.events import (
    ActivityCompleted,
    ActivityConcluded,
    ActivityScheduled,
    TimerFired,
    TimerStarted,
    WorkflowCompleted,
    WorkflowStarted,
)

from support import watch_history, watch_timer_markers
from workflows import double, pipeline, pipeline_expected, sleeper


def kinds(events: list[object]) -> list[str]:
    return [type(e).__name__ for e in events]


async def test_pipeline_completes_with_expected_history(settings: Settings, client: Client) -> None:
    async with Worker([pipeline, double], settings=settings):
        handle = await client.start(pipeline, 5, id="pipe-1")
        assert await handle.result(timeout=30) == pipeline_expected(5)
        events = await handle.history()

    # Started, then three sequential activities, each scheduled -> completed -> closed.
    assert isinstance(events[0], WorkflowStarted)
    sequential = events[1:10]
    assert kinds(sequential) == ["ActivityScheduled", "ActivityCompleted", "ActivityConcluded"] * 3
    assert [e.seq for e in sequential] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    # The gather: ten scheduled in order, then ten completions and ten closes (any order).
    fan = events[10:40]
    assert [e.seq for e in fan[:10] if isinstance(e, ActivityScheduled)] == list(range(4, 14))
    assert sorted(e.seq for e in fan if isinstance(e, ActivityCompleted)) == list(range(4, 14))
    assert sorted(e.seq for e in fan if isinstance(e, ActivityConcluded)) == list(range(4, 14))
    assert kinds(events[40:]) == ["TimerStarted", "TimerFired", "WorkflowCompleted"]
    started, fired = events[40], events[41]
    assert isinstance(started, TimerStarted) and isinstance(fired, TimerFired)
    assert started.timer == fired.timer == "t.1"
    assert isinstance(events[-1], WorkflowCompleted)
    assert msgspec.json.decode(events[-1].result) == pipeline_expected(5)
    assert len(events) == 43


async def test_status_and_listing(settings: Settings, client: Client) -> None:
    async with Worker([pipeline, double], settings=settings):
        handle = await client.start(pipeline, 1, id="listed")
        await handle.result(timeout=30)
    description = await handle.describe()
    assert description.status == "COMPLETED"
    assert description.workflow == "pipeline"
    assert description.history_length == 43
    listed = await client.list_executions(status="COMPLETED", workflow="pipeline")
    assert [d.execution_id for d in listed] == ["listed"]
    assert await client.list_executions(status="RUNNING") == []


async def test_start_is_idempotent_on_id(settings: Settings, client: Client) -> None:
    async with Worker([pipeline, double], settings=settings), watch_history(client) as watch:
        first = await client.start(pipeline, 2, id="same")
        second = await client.start(pipeline, 2, id="same")
        assert first.id == second.id == "same"
        assert await first.result(timeout=30) == await second.result(timeout=30) == pipeline_expected(2)
        # Only one execution ran: one WorkflowStarted in its history.
        started = [e for e in watch.events("same") if isinstance(e, WorkflowStarted)]
        assert len(started) == 1


async def test_malformed_input_fails_the_start_clearly(settings: Settings, client: Client) -> None:
    with pytest.raises(InvalidPayload) as caught:
        await client.start(pipeline, "not a number", id="bad-input")
    message = str(caught.value)
    assert "input of workflow 'pipeline'" in message and "int" in message
    with pytest.raises(InvalidPayload, match="execution id"):
        await client.start(pipeline, 1, id="has.dots")


async def test_bad_input_by_name_fails_the_execution(settings: Settings, client: Client) -> None:
    async with Worker([pipeline, double], settings=settings):
        handle = await client.start("pipeline", {"nested": True}, id="by-name")
        with pytest.raises(Exception) as caught:
            await handle.result(timeout=30)
    assert "does not decode as int" in str(caught.value)
    assert (await handle.describe()).status == "FAILED"


@activity(retry=RetryPolicy(maximum_attempts=1))  # the error of attempt 1 is what the tests see
async def explode(x: int) -> int:
    raise ValueError(f"bad value {x}")


@workflow
async def catches(x: int) -> str:
    from perdure import ActivityError

    try:
        await explode(x)
    except ActivityError as exc:
        return f"{exc.type}: {exc.message}"
    return "no error"


async def test_activity_error_reaches_the_workflow(settings: Settings, client: Client) -> None:
    async with Worker([catches, explode], settings=settings):
        handle = await client.start(catches, 7)
        assert await handle.result(timeout=30) == "ValueError: bad value 7"


@activity
async def wait_outside(x: int, ctx: object) -> int:
    return make_async()


@workflow
async def waits_with_timeout(x: int) -> str:
    try:
        await asyncio.wait_for(wait_outside(x), timeout=0.3)
    except TimeoutError:
        return "timed out"
    return "finished"


async def test_wait_for_is_a_durable_timer(settings: Settings, client: Client) -> None:
    async with Worker([waits_with_timeout, wait_outside], settings=settings):
        handle = await client.start(waits_with_timeout, 1)
        assert await handle.result(timeout=30) == "timed out"
        events = await handle.history()
    assert any(isinstance(e, TimerStarted) for e in events)
    closed = [e for e in events if isinstance(e, ActivityConcluded)]
    assert [c.outcome for c in closed] == ["cancelled"]


async def test_timer_fires_on_time_while_the_runtime_lives(settings: Settings, client: Client) -> None:
    """The owning runtime fires a timer from memory at its time: never early, and before its
    KV key expires (a 1.2 s timer's key has a 2 s TTL, rounded up), so the firing is in history
    before any expiry marker could be: the order of events shows which path fired it."""
    async with (
        Worker([sleeper], settings=settings),
        watch_history(client) as history,
        watch_timer_markers(client, history) as markers,
    ):
        handles = [await client.start(sleeper, 1.2, id=f"on-time-{i}") for i in range(3)]
        lateness = [await h.result(timeout=30) for h in handles]
        await history.wait_for(
            lambda w: all(any(isinstance(e, TimerFired) for e in w.events(h.id)) for h in handles)
        )
    assert all(markers.fired_from_memory(h.id, "t.1") for h in handles), markers.markers
    print(f"\n[timers] 1.2 s timers fired after {', '.join(f'{e:.3f}' for e in lateness)} s")
    for elapsed in lateness:
        assert elapsed >= 1.2, lateness
    assert not markers.markers, markers.markers


async def test_listing_reads_past_the_first_thousand(settings: Settings, client: Client) -> None:
    from perdure.runtime import codec
    from perdure.runtime.messages import ExecutionRecord
    from perdure.runtime.provision import Provisioner

    await Provisioner(client.conn, settings).provision()
    bucket = client.names.executions_bucket
    acks = [
        await client.conn.publish_nowait(
            f"$KV.{bucket}.e{i}",
            codec.encode(
                ExecutionRecord(
                    execution_id=f"e{i}", workflow="w", status="COMPLETED" if i % 2 else "RUNNING"
                )
            ),
        )
        for i in range(1_500)
    ]
    await asyncio.gather(*acks)
    listed = await client.list_executions()
    assert len(listed) == 1_500
    running = await client.list_executions(status="RUNNING")
    assert sorted(int(d.execution_id[1:]) for d in running) == list(range(0, 1_500, 2))


async def test_a_thousand_concurrent_results(settings: Settings, client: Client) -> None:
    """Waiters share one index watch: a thousand result() calls at once do not each need a
    consumer of their own (the server's limit), and none misses its execution's close."""
    async with Worker([catches, explode], settings=settings):
        handles = await asyncio.gather(*[client.start(catches, i, id=f"many-{i}") for i in range(1_000)])
        results = await asyncio.gather(*[h.result(timeout=120) for h in handles])
    assert results == [f"ValueError: bad value {i}" for i in range(1_000)]
