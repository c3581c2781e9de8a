"""Eager activity attempts (actors/local_activities.py): an attempt of an activity the
deciding runtime hosts runs there at once, without a work item; a crash loses none."""

from __future__ import annotations

import asyncio
import dataclasses

from perdure import Client, EmbeddedServer, Settings, Worker
from perdure.runtime.events import ActivityCompleted, ActivityScheduled

from support import RuntimeProcess, assert_applied_once, watch_history
from workflows import double, pipeline, pipeline_expected, slow_chain, slow_chain_expected


async def work_items_published(client: Client) -> int:
    info = await client.conn.stream_info(client.names.work_stream)
    return info.state.last_seq


async def test_attempts_run_where_they_are_decided(settings: Settings, client: Client) -> None:
    async with Worker([pipeline, double], settings=settings):
        handle = await client.start(pipeline, 5, id="eager-pipeline")
        assert await handle.result(timeout=30) == pipeline_expected(5)
    steps = await handle.history_steps()
    scheduled = [d.seq for s in steps for d in s.decisions if isinstance(d, ActivityScheduled)]
    eager = [seq for s in steps for seq in s.eager]
    assert sorted(eager) == sorted(scheduled) and len(scheduled) == 13
    assert await work_items_published(client) == 0


async def test_attempts_that_find_every_slot_taken_go_the_ordinary_way(
    settings: Settings, client: Client
) -> None:
    """A slot is taken as an eager attempt starts, after its step is appended (steps waiting
    for their appends hold none, so a burst of quick attempts does not spill to the work
    stream). With one slot, the sequential attempts run here; of a fan-out of ten in one
    step, the first takes the slot and the other nine go as work items. All are recorded as
    eager in their step, and each is applied once."""
    one_slot = dataclasses.replace(settings, activity_concurrency=1)
    async with Worker([pipeline, double], settings=one_slot):
        handle = await client.start(pipeline, 5, id="one-slot-pipeline")
        assert await handle.result(timeout=30) == pipeline_expected(5)
    steps = await handle.history_steps()
    scheduled = [d.seq for s in steps for d in s.decisions if isinstance(d, ActivityScheduled)]
    assert sorted(seq for s in steps for seq in s.eager) == sorted(scheduled) and len(scheduled) == 13
    assert await work_items_published(client) == 9
    events = [e for s in steps for e in (*s.inputs, *s.decisions)]
    assert_applied_once(events, handle.id)
    assert sum(isinstance(e, ActivityCompleted) for e in events) == 13


async def test_without_eager_every_attempt_is_a_work_item(settings: Settings, client: Client) -> None:
    plain = dataclasses.replace(settings, eager_activities=False)
    async with Worker([pipeline, double], settings=plain):
        handle = await client.start(pipeline, 5, id="plain-pipeline")
        assert await handle.result(timeout=30) == pipeline_expected(5)
    assert all(not s.eager for s in await handle.history_steps())
    assert await work_items_published(client) == 13


async def test_eager_attempts_without_timeouts_survive_sigkill(
    nats_server: EmbeddedServer, namespace: str, client: Client
) -> None:
    """The activities have no timeout, so no timer would ever retry them: the scheduling
    step's inbox message, held until the outcomes are in history, brings them back."""
    runtime = await RuntimeProcess(nats_server.url, namespace, "eager").astart()
    ids = [f"chain-{i}" for i in range(20)]
    try:
        async with watch_history(client) as watch:
            handles = [await client.start(slow_chain, i, id=ids[i]) for i in range(20)]

            def second_activity_everywhere(w: object) -> bool:
                return all(
                    any(isinstance(e, ActivityScheduled) and e.seq == 2 for e in w.events(i))  # type: ignore[attr-defined]
                    for i in ids
                )

            await watch.wait_for(second_activity_everywhere)
        runtime.kill()  # every workflow has its second activity in flight, eagerly, without a work item
        assert await work_items_published(client) == 0
        await runtime.astart()
        results = await asyncio.gather(*[h.result(timeout=60) for h in handles])
    finally:
        runtime.kill()
    assert results == [slow_chain_expected(i) for i in range(20)]
    for handle in handles:
        assert_applied_once(await handle.history(), handle.id)
    assert await work_items_published(client) >= 20  # the lost attempts came back as work items
