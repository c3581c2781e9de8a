"""Partition ownership: which runtime handles which inbox partitions, with failover.

Why this design: every execution's inbox messages land in one of N partitions (the inbox
stream's ``partition(N)`` subject transform). A runtime owns a partition through a lease,
a key in the leases bucket with a TTL, renewed every ``lease_ttl / 3`` with an expected
revision (a failed renewal means someone else holds it now: stop at once). Partitions are
assigned by rendezvous hashing over the live members (each runtime re-puts
``member.<name>`` with the same TTL), so every runtime computes the same assignment
without talking to the others, and a joining or leaving runtime moves only its share.

A runtime that dies stops renewing: its member key and leases expire after ``lease_ttl``
and the others claim its partitions on their next tick. A runtime that stops gracefully
releases its leases and announces it, and the others claim at once. Optimistic
concurrency on history appends remains the safety net against two owners at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import msgspec
import structlog

from perdure.runtime import codec
from perdure.runtime.errors import HistoryConflict, PerdureError
from perdure.runtime.messages import Lease
from perdure.runtime.naming import partition_of
from perdure.runtime.nats_client import Connection, StoredMessage, Subscription
from perdure.runtime.settings import Settings

log = structlog.get_logger("perdure.ownership")


def _score(member: str, partition: int) -> int:
    return partition_of(f"{member}/{partition}", 2**31 - 1)


def assign(members: list[str], partitions: int) -> dict[int, str]:
    """Rendezvous hashing: each partition goes to the member that scores highest for it."""
    ordered = sorted(set(members))
    return {p: max(ordered, key=lambda m: (_score(m, p), m)) for p in range(partitions)} if ordered else {}


class PartitionOwnership:
    def __init__(
        self,
        conn: Connection,
        settings: Settings,
        *,
        on_acquire: Callable[[int], Awaitable[None]],
        on_release: Callable[[int], Awaitable[None]],
    ) -> None:
        self._conn = conn
        self._settings = settings
        self._name = settings.name
        bucket = settings.names.leases_bucket
        self._stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."
        self._changed_subject = settings.names.api("ownership.changed")
        self._on_acquire = on_acquire
        self._on_release = on_release
        self.owned: dict[int, int] = {}  # partition -> lease revision
        self._wake = asyncio.Event()
        self._sub: Subscription | None = None
        self._stopping = False

    def owns(self, partition: int) -> bool:
        return partition in self.owned

    async def run(self) -> None:
        """Tick until cancelled: keep membership, renew, claim and release leases."""
        self._sub = await self._conn.serve(self._changed_subject, self._on_changed, queue="")
        interval = self._settings.lease_ttl / 3
        try:
            while not self._stopping:
                try:
                    await self.tick()
                except PerdureError as exc:
                    log.warning("ownership.tick_failed", error=str(exc))
                self._wake.clear()
                try:
                    async with asyncio.timeout(interval):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            if self._sub is not None:
                await self._sub.stop()

    async def _on_changed(self, data: bytes, headers: dict[str, str], reply: str) -> None:
        if data.decode(errors="replace") != self._name:
            self._wake.set()

    async def tick(self) -> None:
        await self._put(f"member.{self._name}", Lease(owner=self._name, acquired_at=time.time()), None)
        await self._renew()
        members, leases = await self._read_state()
        if self._name not in members:
            members.append(self._name)
        mine = {p for p, m in assign(members, self._settings.partitions).items() if m == self._name}
        for partition in sorted(set(self.owned) - mine):
            await self._release(partition)
        held_elsewhere = False
        for partition in sorted(mine - set(self.owned)):
            held_elsewhere |= not await self._claim(partition, leases.get(partition))
        if held_elsewhere:
            # We joined (or came back): tell the current holders now rather than at their next tick.
            await self._conn.publish_core(self._changed_subject, self._name.encode())

    async def _read_state(self) -> tuple[list[str], dict[int, StoredMessage]]:
        stored = await self._conn.get_multi_last(
            self._stream, [f"{self._prefix}member.*", f"{self._prefix}partition.*"]
        )
        members: list[str] = []
        leases: dict[int, StoredMessage] = {}
        for msg in stored:
            key = msg.subject[len(self._prefix) :]
            lease = _decode(msg)
            if key.startswith("member.") and lease is not None and lease.owner:
                members.append(lease.owner)
            elif key.startswith("partition."):
                leases[int(key.split(".", 1)[1])] = msg
        return members, leases

    async def _claim(self, partition: int, current: StoredMessage | None) -> bool:
        """Take the partition's lease if it is free (or ours from a previous life); True if taken."""
        lease = _decode(current) if current is not None else None
        if lease is not None and lease.owner and lease.owner != self._name:
            return False  # still held: its owner releases it, or it expires
        try:
            revision = await self._put(
                f"partition.{partition}",
                Lease(owner=self._name, acquired_at=time.time()),
                current.seq if current is not None else 0,
            )
        except HistoryConflict:
            return False  # someone else got it first
        self.owned[partition] = revision
        log.info("partition.acquired", partition=partition, runtime=self._name)
        await self._on_acquire(partition)
        return True

    async def _renew(self) -> None:
        for partition, revision in list(self.owned.items()):
            try:
                self.owned[partition] = await self._put(
                    f"partition.{partition}", Lease(owner=self._name, acquired_at=time.time()), revision
                )
            except HistoryConflict:
                log.warning("partition.lost", partition=partition, runtime=self._name)
                self.owned.pop(partition, None)
                await self._on_release(partition)

    async def _release(self, partition: int) -> None:
        revision = self.owned.pop(partition)
        await self._on_release(partition)
        with contextlib.suppress(HistoryConflict):  # already taken over: nothing to release
            await self._put(
                f"partition.{partition}", Lease(owner="", acquired_at=time.time()), revision, ttl=1
            )
        log.info("partition.released", partition=partition, runtime=self._name)
        await self._conn.publish_core(self._changed_subject, self._name.encode())

    async def release_all(self) -> None:
        """Graceful hand-over: release every lease and leave the membership."""
        self._stopping = True
        for partition in sorted(self.owned):
            await self._release(partition)
        await self._put(f"member.{self._name}", Lease(owner="", acquired_at=time.time()), None, ttl=1)
        await self._conn.publish_core(self._changed_subject, self._name.encode())

    async def _put(self, key: str, lease: Lease, expected: int | None, *, ttl: float | None = None) -> int:
        ack = await self._conn.publish(
            self._prefix + key,
            codec.encode(lease),
            expected_last_subject_seq=expected,
            ttl=ttl if ttl is not None else self._settings.lease_ttl,
        )
        return ack.seq


def _decode(msg: StoredMessage | None) -> Lease | None:
    if msg is None or not msg.data or msg.headers.get("Nats-Marker-Reason"):
        return None
    try:
        return codec.lease.decode(msg.data)
    except msgspec.DecodeError:
        return None
