"""KVBucket (runtime/kv_bucket.py) against a real server: compare-and-set puts, TTLs, purge,
watch, and ``update``'s bounded read-change-write loop under real conflicts."""

from __future__ import annotations

import asyncio

import pytest

from perdure import Client
from perdure.runtime.errors import HistoryConflict
from perdure.runtime.kv_bucket import KVBucket, Put
from perdure.runtime.nats_admin import ensure_kv_stream
from perdure.runtime.nats_client import StoredMessage


class RacingBucket(KVBucket):
    """Another writer stores the key right after each of the first ``races`` reads, so the
    compare-and-set that follows loses (a real conflict, on the real server)."""

    races = 0

    async def get(self, key: str) -> StoredMessage | None:
        stored = await super().get(key)
        if self.races > 0:
            self.races -= 1
            await self.put(key, b"other")
        return stored


async def bucket(client: Client, cls: type[KVBucket] = KVBucket) -> KVBucket:
    name = f"{client.names.namespace.upper()}_TEST"
    await ensure_kv_stream(client.conn, bucket=name, replicas=1, marker_ttl=60)
    return cls(client.conn, client.names, name)


def appended(suffix: bytes, seen: list[int]):  # type: ignore[no-untyped-def]
    def change(stored: StoredMessage | None, conflicts: int) -> Put | None:
        seen.append(conflicts)
        return Put((stored.data if stored is not None else b"") + suffix)

    return change


async def test_put_with_a_revision_is_a_compare_and_set(client: Client) -> None:
    kv = await bucket(client)
    first = await kv.put("k", b"1", revision=0)  # create only
    with pytest.raises(HistoryConflict):
        await kv.put("k", b"x", revision=0)
    await kv.put("k", b"2", revision=first.seq)
    with pytest.raises(HistoryConflict):
        await kv.put("k", b"x", revision=first.seq)
    stored = await kv.get("k")
    assert stored is not None and stored.data == b"2"


async def test_a_put_with_a_ttl_carries_it_and_purge_removes_every_key(client: Client) -> None:
    kv = await bucket(client)
    await kv.put("a.1", b"1", ttl=30)
    await kv.put("a.2", b"2")
    stored = await kv.get("a.1")
    assert stored is not None and stored.headers.get("Nats-TTL") == "30s"
    assert {m.data for m in await kv.get_many(["a.*"])} == {b"1", b"2"}
    await kv.purge("a.>")
    assert await kv.get("a.1") is None and await kv.get("a.2") is None


async def test_watch_delivers_each_put_with_its_key(client: Client) -> None:
    kv = await bucket(client)
    seen: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def on_entry(message: StoredMessage) -> None:
        seen.put_nowait((kv.key_of(message.subject), message.data))

    sub = await kv.watch("w.>", on_entry)
    try:
        await kv.put("w.x", b"1")
        await kv.put("other", b"ignored")
        await kv.put("w.y", b"2")
        async with asyncio.timeout(10):
            assert [await seen.get(), await seen.get()] == [("w.x", b"1"), ("w.y", b"2")]
    finally:
        await sub.stop()


async def test_update_reads_again_after_losing_to_another_writer(client: Client) -> None:
    kv = await bucket(client, RacingBucket)
    await kv.put("u", b"a")
    kv.races = 2  # type: ignore[attr-defined]
    seen: list[int] = []
    outcome = await kv.update("u", appended(b"+", seen), attempts=5)
    assert seen == [0, 1, 2]
    assert outcome.ack is not None and outcome.stored is not None and outcome.stored.data == b"other"
    stored = await kv.get("u")
    assert stored is not None and stored.data == b"other+" and stored.seq == outcome.ack.seq


async def test_update_gives_up_after_its_attempts(client: Client) -> None:
    kv = await bucket(client, RacingBucket)
    kv.races = 100  # type: ignore[attr-defined]
    seen: list[int] = []
    with pytest.raises(HistoryConflict, match="changed 3 times"):
        await kv.update("g", appended(b"+", seen), attempts=3)
    assert seen == [0, 1, 2]


async def test_update_writes_nothing_when_the_change_says_so(client: Client) -> None:
    kv = await bucket(client)
    await kv.put("n", b"same")
    outcome = await kv.update("n", lambda stored, conflicts: None)
    assert outcome.ack is None and outcome.stored is not None and outcome.stored.data == b"same"
    stored = await kv.get("n")
    assert stored is not None and stored.seq == outcome.stored.seq
