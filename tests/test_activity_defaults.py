"""Activities retry by default, with Temporal's back-off (issue 10 item 11); sync activities
heartbeat like async ones (item 14)."""

from __future__ import annotations

import asyncio

import msgspec
from timeout_workflows import (
    FAILURES,
    SYNC_DONE,
    SYNC_GONE,
    default_retries,
    explicit_no_retry,
    fails_twice,
    sync_batch,
    sync_flaky,
    sync_impatient,
    sync_stubborn,
)

from perdure import Client, RetryPolicy, Settings, Worker
from perdure.runtime import codec
from perdure.runtime.errors import ErrorInfo
from perdure.runtime.events import ActivityRetrying, ActivityScheduled


async def test_an_activity_without_a_retry_policy_is_retried_with_back_off(
    settings: Settings, client: Client
) -> None:
    async with Worker([default_retries, fails_twice], settings=settings):
        handle = await client.start(default_retries, "default", id="default")
        assert await handle.result(timeout=30) == 3
    history = await handle.history()
    retrying = [e for e in history if isinstance(e, ActivityRetrying)]
    assert [(e.attempt, e.delay) for e in retrying] == [(2, 1.0), (3, 2.0)], retrying
    scheduled = next(e for e in history if isinstance(e, ActivityScheduled))
    # The policy is recorded in full, so history never depends on a default.
    assert scheduled.options.retry == RetryPolicy(
        initial_interval=1.0, backoff_coefficient=2.0, maximum_interval=100.0, maximum_attempts=0
    )
    assert FAILURES["default"] == 2


async def test_maximum_attempts_1_means_no_retry(settings: Settings, client: Client) -> None:
    async with Worker([explicit_no_retry, fails_twice], settings=settings):
        handle = await client.start(explicit_no_retry, "once", id="once")
        outcome = await handle.result(timeout=30)
    assert outcome == "ActivityError ConnectionError: transient failure 1", outcome
    assert FAILURES["once"] == 1


def test_a_policy_recorded_before_retries_were_the_default_keeps_its_meaning() -> None:
    """History lives forever: ``RetryPolicy(initial_interval=0.5)`` used to mean one attempt
    (``maximum_attempts`` defaulted to 1 and was omitted on the wire), and no policy meant
    no retry. Decoded now, they mean the same."""
    error = ErrorInfo(code="activity.failed", type="ConnectionError", message="x")
    old = codec.decode(
        codec.history_step,
        b'{"time":1.0,"decisions":[{"kind":"activity.scheduled","seq":1,"name":"a","input":1,'
        b'"options":{"retry":{"initial_interval":0.5}}}]}',
        what="old history",
    )
    policy = old.decisions[0].options.retry  # type: ignore[union-attr]
    assert policy is not None and not policy.allows(2, error)
    assert policy.delay_before(30) == 100.0  # the old cap
    new = RetryPolicy(initial_interval=0.5)
    assert new.resolved().allows(1000, error)  # unlimited, as in Temporal
    assert new.resolved().delay_before(30) == 50.0  # 100 x the initial interval
    assert msgspec.json.decode(msgspec.json.encode(new.resolved()), type=RetryPolicy) == new.resolved()


async def test_a_sync_activity_heartbeats_and_learns_it_is_no_longer_wanted(
    settings: Settings, client: Client
) -> None:
    async with Worker([sync_impatient, sync_stubborn], settings=settings):
        handle = await client.start(sync_impatient, 3, id="sync-abandoned")
        assert await handle.result(timeout=10) == "gave up"
        assert await asyncio.to_thread(SYNC_DONE["sync-abandoned"].wait, 15)
    gone = SYNC_GONE["sync-abandoned"]
    assert len(gone) == 1 and gone[0].cancel_requested, gone


async def test_a_sync_activitys_checkpoint_reaches_the_retry(settings: Settings, client: Client) -> None:
    async with Worker([sync_batch, sync_flaky], settings=settings):
        handle = await client.start(sync_batch, 7, id="sync-batch")
        assert await handle.result(timeout=20) == [2, 7]
