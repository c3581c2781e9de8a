"""An eager attempt writes its KV keys only if it needs them (actors/eager_keys.py): a quick
one writes and purges none; one that hands its token over stores its record (flagged
started) and a durable timeout, which fires after a SIGKILL; its heartbeat details are its
retry's checkpoint; its timeout, armed in memory, still times out code that overruns it."""

from __future__ import annotations

import asyncio
import collections
import dataclasses

import nats
from eager_key_workflows import (
    CHECKPOINTS,
    add_one,
    count_up,
    hand_off,
    handed_off,
    oversleep,
    overslept,
    resume,
    resumed,
)

from perdure import Client, EmbeddedServer, Settings, Worker
from perdure.runtime import codec
from perdure.runtime.kv_bucket import KVBucket
from perdure.runtime.nats_client import StoredMessage

from support import RuntimeProcess, SubjectSpy


class KeySpy(SubjectSpy):
    """Counts every write to the timers bucket and every purge request, as the server sees them."""

    def __init__(self, client: Client, url: str) -> None:
        self.timers = f"$KV.{client.names.timers_bucket}."
        self.purge = f"$JS.API.STREAM.PURGE.{client.names.kv_stream(client.names.timers_bucket)}"
        self.seen: collections.Counter[str] = collections.Counter()
        super().__init__(url, [self.timers + ">", self.purge])

    async def on_message(self, msg: nats.aio.msg.Msg) -> None:
        self.seen["purge" if msg.subject == self.purge else "put"] += 1


async def test_a_quick_eager_attempt_writes_and_purges_no_key(
    nats_server: EmbeddedServer, settings: Settings, client: Client
) -> None:
    # Control: the same workflow with work items writes records and timers, and purges them.
    plain = dataclasses.replace(settings, eager_activities=False)
    async with KeySpy(client, nats_server.url) as ordinary, Worker([count_up, add_one], settings=plain):
        assert await (await client.start(count_up, 5, id="keys-plain")).result(timeout=30) == 5
    assert ordinary.seen["put"] >= 10 and ordinary.seen["purge"] >= 5, ordinary.seen

    async with KeySpy(client, nats_server.url) as eager, Worker([count_up, add_one], settings=settings):
        handle = await client.start(count_up, 5, id="keys-eager")
        assert await handle.result(timeout=30) == 5
    assert eager.seen == {}, eager.seen  # five timed attempts, not one key written or purged
    assert sum(len(step.eager) for step in await handle.history_steps()) == 5  # all ran eagerly


async def attempt_keys(client: Client, execution_id: str) -> dict[str, StoredMessage]:
    bucket = KVBucket(client.conn, client.names, client.names.timers_bucket)
    return {bucket.key_of(m.subject).rsplit(".", 1)[1]: m for m in await bucket.scan(f"*.{execution_id}.>")}


async def wait_for_handover(client: Client, execution_id: str) -> None:
    """Until the attempt's record says started and its timeout is a KV timer."""
    bucket = KVBucket(client.conn, client.names, client.names.timers_bucket)
    keys: dict[str, StoredMessage] = {}
    handed = asyncio.Event()

    async def on_entry(msg: StoredMessage) -> None:
        keys[bucket.key_of(msg.subject).rsplit(".", 1)[1]] = msg
        record = keys.get("hb")
        if record is not None and codec.activity_record.decode(record.data).started and "to" in keys:
            handed.set()

    watch = await bucket.watch(f"*.{execution_id}.>", on_entry)
    try:
        await asyncio.wait_for(handed.wait(), 30)
    finally:
        await watch.stop()


async def test_a_handed_over_eager_attempt_stores_its_record_and_timeout(
    settings: Settings, client: Client
) -> None:
    async with Worker([handed_off, hand_off], settings=settings):
        handle = await client.start(handed_off, "x", id="keys-handover")
        await wait_for_handover(client, handle.id)
        keys = await attempt_keys(client, handle.id)
        assert "Nats-TTL" in keys["to"].headers  # the backstop a crash cannot lose
        assert await handle.result(timeout=30) == "ActivityTimeout"
    assert await attempt_keys(client, handle.id) == {}  # the close purged them (the stop awaits its steps)


async def test_a_handed_over_eager_attempt_times_out_after_a_sigkill(
    nats_server: EmbeddedServer, namespace: str, client: Client
) -> None:
    runtime = await RuntimeProcess(
        nats_server.url, namespace, "eager-keys", targets=("eager_key_workflows",)
    ).astart()
    try:
        handle = await client.start(handed_off, "x", id="keys-sigkill")
        await wait_for_handover(client, handle.id)
        runtime.kill()  # nothing in any process remembers the attempt's timeout now
        await runtime.astart()
        assert await handle.result(timeout=60) == "ActivityTimeout"
    finally:
        runtime.kill()
    assert (await handle.history_steps())[0].eager == [1]  # it ran eagerly before the SIGKILL


async def test_an_eager_attempts_heartbeat_details_are_its_retrys_checkpoint(
    settings: Settings, client: Client
) -> None:
    async with Worker([resumed, resume], settings=settings):
        handle = await client.start(resumed, 7, id="keys-resume")
        assert await handle.result(timeout=30) == 7
    assert CHECKPOINTS[handle.id] == [None, 7]
    assert any(step.eager for step in await handle.history_steps())


async def test_a_sync_eager_attempt_past_its_timeout_is_timed_out(settings: Settings, client: Client) -> None:
    """Its timeout lives in memory only: it still fires, though the thread sleeps on."""
    async with Worker([overslept, oversleep], settings=settings):
        handle = await client.start(overslept, 1.5, id="keys-oversleep")
        assert await handle.result(timeout=30) == "ActivityTimeout"
    assert any(step.eager for step in await handle.history_steps())
