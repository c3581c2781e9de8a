"""``timeout`` is one attempt, start to close; ``schedule_to_start`` bounds time in the queue
(issue 10 item 10). Real runtime processes with ``--concurrency 1``."""

from __future__ import annotations

import asyncio

import pytest
from timeout_workflows import queued_step, waits_for_a_slot

from perdure import Client, EmbeddedServer
from perdure.runtime.events import ActivityCompleted

from support import RuntimeProcess


@pytest.mark.parametrize("eager", ["0", "1"])
async def test_time_queued_behind_a_busy_slot_is_not_counted_by_timeout(
    nats_server: EmbeddedServer, namespace: str, client: Client, eager: str
) -> None:
    """Three workflows each call an activity of timeout=2 s that takes 1.2 s, on a runtime
    that runs one attempt at a time: each attempt starts after the previous one, the last
    2.4 s after it was scheduled, and all three finish within their 2 s."""
    runtime = RuntimeProcess(
        nats_server.url,
        namespace,
        "one-slot",
        targets=("timeout_workflows",),
        extra_args=("--concurrency", "1"),
        env={"PERDURE_EAGER_ACTIVITIES": eager},
    )
    await runtime.astart()
    try:
        handles = [await client.start(queued_step, i, id=f"queued-{i}") for i in range(3)]
        results = await asyncio.gather(*[h.result(timeout=30) for h in handles])
    finally:
        runtime.kill()
    assert results == ["ok 0", "ok 1", "ok 2"], results


async def test_schedule_to_start_bounds_the_time_in_the_queue(
    nats_server: EmbeddedServer, namespace: str, client: Client
) -> None:
    """One slot, held 2 s by the first attempt: the second waits in the queue past its
    schedule_to_start of 0.5 s and times out then, without ever running."""
    runtime = RuntimeProcess(
        nats_server.url,
        namespace,
        "one-slot",
        targets=("timeout_workflows",),
        extra_args=("--concurrency", "1"),
        env={"PERDURE_EAGER_ACTIVITIES": "0"},
    )
    await runtime.astart()
    try:
        first = await client.start(waits_for_a_slot, 2.0, id="first")
        await runtime.await_line("HOLDING first", timeout=10)
        second = await client.start(waits_for_a_slot, 2.0, id="second")
        loop = asyncio.get_running_loop()
        began = loop.time()
        outcome = await second.result(timeout=30)
        waited = loop.time() - began
        assert await first.result(timeout=30) == "ok 2.0"
        # The slot is free now: the timed-out attempt's work item is taken and dropped, not run.
        await runtime.await_line("activity.not_started", timeout=10)
    finally:
        runtime.kill()
    assert outcome.startswith("ActivityTimeout: "), outcome
    assert "schedule to start" in outcome, outcome
    assert waited < 1.7, waited  # 0.5 s, not after the first attempt's 2 s
    assert "HOLDING second" not in runtime.output()
    history = await second.history()
    assert not any(isinstance(e, ActivityCompleted) for e in history), history
