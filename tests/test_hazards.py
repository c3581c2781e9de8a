"""Issue 10 item 12, the hazards in the execution actor's files, each proved by a test first."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import msgspec
import pytest
from redo_workflows import close_gate, gate, hand_over, leave_running, open_gate, tally_awake
from test_redo import counts, handed_over, recreate_inbox_consumer, tokens_of, wait_until, work_drained

import perdure.actors.partition_host as partition_host
from perdure import ActivityClosed, Client, EmbeddedServer, ExecutionNotFound, Settings, Worker
from perdure.actors.timers import TimerKey
from perdure.runtime import codec
from perdure.runtime.naming import partition_of
from perdure.runtime.nats_admin import ensure_consumer
from perdure.runtime.nats_client import Connection
from perdure.runtime.nats_consumer import PullConsumer
from perdure.runtime.provision import Provisioner


async def test_a_recreated_consumer_keeps_pulling_for_cached_actors(
    settings: Settings, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cached actors gave credit back to the consumer that was deleted: the new one ran dry
    after ``credit`` messages and the partition stopped."""
    monkeypatch.setattr(partition_host, "INBOX_IN_FLIGHT", 8)
    monkeypatch.setattr(partition_host, "INBOX_MIN_CREDIT", 8)
    one = dataclasses.replace(settings, partitions=1)
    async with Worker([tally_awake], settings=one):
        handle = await client.start(tally_awake, 30, id="tally")
        await client.signal("tally", "add", 1)
        await wait_until(lambda: _received(client, "tally", 1), what="the first signal in history")
        await recreate_inbox_consumer(client, 0)
        for _ in range(29):  # more than the consumer's credit (8)
            await client.signal("tally", "add", 1)
        try:
            assert await handle.result(timeout=20) == 30
        except TimeoutError:
            events = await handle.history()
            got = sum(type(e).__name__ == "SignalReceived" for e in events)
            pytest.fail(f"the partition stopped pulling: {got} of 30 signals in history after 20 s")


async def _received(client: Client, execution_id: str, n: int) -> bool:
    try:
        events = await client.get_handle(execution_id).history()
    except ExecutionNotFound:
        return False  # not started yet
    return sum(type(e).__name__ == "SignalReceived" for e in events) >= n


async def test_redo_after_completion_keeps_the_index_and_the_purged_records(
    settings: Settings, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start message comes back after the execution completed (its eager gate still runs
    here): redoing its step put the index back to RUNNING, re-put the closed attempts'
    purged records without a TTL, and sent the gate a work item that ran it a second time."""
    log = tmp_path / "runs.log"
    log.touch()
    monkeypatch.setenv("PERDURE_TEST_RUN_LOG", str(log))
    close_gate()
    execution_id = "left-running"
    partitions = settings.partitions
    async with Worker([leave_running, gate, hand_over], settings=settings):
        handle = await client.start(leave_running, 1, id=execution_id)
        await wait_until(lambda: counts(log)["gate 1.g"] == 1, what="the gate running")
        await wait_until(
            lambda: handed_over(client, execution_id, partitions, seq=2), what="token handed over"
        )
        await client.signal(execution_id, "done", "now")
        assert await handle.result(timeout=10) == "done"
        assert (await handle.describe()).status == "COMPLETED"
        await recreate_inbox_consumer(client, partition_of(execution_id, partitions))
        with pytest.raises(ActivityClosed):  # answered after the start message was redone
            await client.complete_activity(tokens_of(log)["1.h"][0], "late")
        status = (await handle.describe()).status
        records = [await _record(client, execution_id, partitions, seq) for seq in (1, 2)]
        open_gate()
        await wait_until(lambda: work_drained(client), what="work stream drained")
    # The index stays COMPLETED, the closed activities' records stay purged, the gate ran once.
    assert (status, records, counts(log)["gate 1.g"]) == ("COMPLETED", [None, None], 1)


async def _record(client: Client, execution_id: str, partitions: int, seq: int) -> bytes | None:
    names = client.names
    key = TimerKey(partition_of(execution_id, partitions), execution_id, 1, f"a.{seq}.1.hb")
    stored = await client.conn.get_last(f"KV_{names.timers_bucket}", f"$KV.{names.timers_bucket}.{key.key()}")
    return stored.data if stored is not None and stored.is_value else None


async def test_delivery_ack_failures_are_reported(nats_server: EmbeddedServer, settings: Settings) -> None:
    """An ack that cannot be sent (the connection is gone) says so instead of passing in silence."""
    conn = await Connection.connect(nats_server.url, name="ack-test")
    await Provisioner(conn, settings).provision()
    names = settings.names
    await ensure_consumer(
        conn,
        stream=names.inbox_stream,
        name="ack-test",
        filter_subject=names.inbox_partition(0),
        ack_wait=30,
        max_ack_pending=10,
    )
    consumer = PullConsumer(conn, names.inbox_stream, "ack-test", credit=1)
    await consumer.start()
    execution_id = next(f"x{i}" for i in range(1000) if partition_of(f"x{i}", settings.partitions) == 0)
    await conn.publish(names.inbox(execution_id), b"{}")
    [delivery] = await consumer.next_batch()
    await consumer.stop()
    await conn.close()
    assert await delivery.ack() is False
    assert await delivery.nak(delay=1.0) is False


def test_codec_null_exists() -> None:
    """``codec.NULL`` was referenced (client/handle.py) but did not exist."""
    assert msgspec.Raw(b"null") == codec.NULL
