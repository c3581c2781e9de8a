"""A retried attempt pulled from a work item after its activity closed is not run (issue 10,
"repeats"): attempt 2's work item, sent when attempt 1's timeout or liveness key fired, can
reach a worker after attempt 1's late result is in history. The worker asks history first
(actors/attempt_gate.py)."""

from __future__ import annotations

import asyncio

from payload_workflows import recorded, records, runs

from perdure import Client, Settings, Worker
from perdure.actors.attempt_gate import RECHECK_HEADER
from perdure.runtime import codec
from perdure.runtime.events import ActivityScheduled
from perdure.runtime.messages import ActivityTask


async def scheduled(client: Client, execution_id: str) -> tuple[int, ActivityScheduled]:
    """(run, decision) of the execution's only activity, from history."""
    stored = await client.conn.read_subject(client.names.history_stream, client.names.history(execution_id))
    for message in stored:
        step = codec.history_step.decode(message.data)
        for decision in step.decisions:
            if isinstance(decision, ActivityScheduled):
                return 1, decision
    raise AssertionError(f"no activity in the history of {execution_id}")


async def settled(client: Client, activity: str, stream_seq: int) -> None:
    """Until the activity's consumer delivered ``stream_seq`` and holds nothing unacked."""
    async with asyncio.timeout(20):
        while True:
            info = await client.conn.consumer_info(
                client.names.work_stream, client.names.work_consumer(activity)
            )
            if info.delivered.stream_seq >= stream_seq and info.num_ack_pending == 0:
                return
            await asyncio.sleep(0.05)


async def test_a_retry_delivered_after_the_activity_closed_does_not_run(
    settings: Settings, client: Client
) -> None:
    runs.clear()
    async with Worker([records, recorded], settings=settings):
        handle = await client.start(records, "once", id="gate-retry")
        assert await handle.result(timeout=30) == "once"
        run, decision = await scheduled(client, "gate-retry")
        # Attempt 2's work item, as a timeout firing during attempt 1's late result sends it:
        # delivered only now, with attempt 1's outcome (and the run's end) in history.
        task = ActivityTask(
            execution_id="gate-retry",
            workflow="records",
            run=run,
            seq=decision.seq,
            attempt=decision.attempt + 1,
            name="recorded",
            input=decision.input,
            nonce="retry-nonce",
            token="t",
            options=decision.options,
        )
        ack = await client.conn.publish(client.names.work("recorded"), codec.encode(task))
        await settled(client, "recorded", ack.seq)
    assert runs == ["gate-retry:once"], runs


async def test_a_work_item_sent_again_after_the_activity_closed_does_not_run(
    settings: Settings, client: Client
) -> None:
    """Attempt 1's work item sent again by a redone step or an eager recovery (another
    holder of the partition absorbed its outcome meanwhile) carries the recheck header."""
    runs.clear()
    async with Worker([records, recorded], settings=settings):
        handle = await client.start(records, "first", id="gate-resent")
        assert await handle.result(timeout=30) == "first"
        run, decision = await scheduled(client, "gate-resent")
        task = ActivityTask(
            execution_id="gate-resent",
            workflow="records",
            run=run,
            seq=decision.seq,
            attempt=decision.attempt,
            name="recorded",
            input=decision.input,
            nonce=decision.nonce,
            token="t",
            options=decision.options,
        )
        ack = await client.conn.publish(
            client.names.work("recorded"), codec.encode(task), headers={RECHECK_HEADER: "1"}
        )
        await settled(client, "recorded", ack.seq)
    assert runs == ["gate-resent:first"], runs
