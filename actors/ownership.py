"""Partition ownership: which runtime handles which inbox partitions, with failover.

Why this design: every execution's inbox messages land in one of N partitions (the inbox
stream's ``partition(N)`` subject transform). A runtime owns a partition through a lease,
a key in the leases bucket with a TTL, renewed every ``lease_ttl / 3`` with an expected
revision. A renewal that conflicts means the lease lapsed (renewed too late by a busy or
paused process, or an ack was lost) or someone else holds it: a lapsed lease nobody else
took is taken back in place, the partition's consumer and actors untouched; one held by a
live runtime is let go at once. Every runtime
also re-puts ``member.<name>`` with the same TTL, and computes the same assignment of
partitions to live members without talking to the others (``assign``: rendezvous hashing
with bounded loads, so each member gets ``N // M`` or ``N // M + 1`` partitions and a
joining or leaving runtime moves little more than its share).

A runtime that dies stops renewing. Its member key is put first in every tick, so it
expires first; the others read the time it was stored and wake up just after it expires
(not at their next periodic tick), see that the holder of the leases is no longer a
member, and take its partitions with a compare-and-set on the lease's revision: the
takeover comes ``lease_ttl`` (at most) after the last renewal, a few milliseconds more.
A tick can be held up for longer than that by the partitions it starts or stops (steps
settling, for up to ``PARTITION_SETTLE``; on a cluster after a failover, consumers created
slowly): meanwhile ``keep_membership`` re-puts the member key, or the others would take
every partition of a live runtime, which then takes them back (the cluster failover's
slow tail, issue 10 item 12).

A runtime that stops gracefully (``release_all``) lets the steps under way on all its
partitions finish, then leaves the membership and releases every lease at once, and
announces it on ``<ns>.api.ownership.changed``: the others claim at once, without waiting
for any TTL. Optimistic concurrency on history appends remains the safety net against
two owners at once.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import msgspec
import structlog

from perdure.runtime import codec
from perdure.runtime.errors import ConnectionLost, HistoryConflict, PerdureError
from perdure.runtime.kv_bucket import KVBucket
from perdure.runtime.messages import Lease
from perdure.runtime.nats_client import Connection, StoredMessage, Subscription
from perdure.runtime.settings import Settings

from .partition_assignment import assign

log = structlog.get_logger("perdure.ownership")

EXPIRY_SLACK = 0.01  # wake this long after another member's key is due to expire
RETRY_FLOOR = 0.05  # the server is late expiring a key (it checks every 250 ms at worst): re-read this often


class PartitionOwnership:
    def __init__(
        self,
        conn: Connection,
        settings: Settings,
        *,
        on_acquire: Callable[[int], Awaitable[None]],
        on_release: Callable[[int], Awaitable[None]],
        on_retake: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self._conn = conn
        self._settings = settings
        self._name = settings.name
        self._leases = KVBucket(conn, settings.names, settings.names.leases_bucket)
        self._changed_subject = settings.names.api("ownership.changed")
        self._on_acquire = on_acquire
        self._on_release = on_release
        self._on_retake = on_retake
        self.owned: dict[int, int] = {}  # partition -> lease revision
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one tick (or the final release) at a time
        self._sub: Subscription | None = None
        self._stopping = False
        self._next_expiry: float | None = None  # local time another member's key is due to expire
        self._tick_began: float | None = None  # monotonic time the tick under way began

    def owns(self, partition: int) -> bool:
        return partition in self.owned

    def wake(self) -> None:
        """Tick now (e.g. a partition's consumer was deleted: somebody may have taken it)."""
        self._wake.set()

    async def run(self) -> None:
        """Tick until cancelled: keep membership, renew, claim and release leases."""
        self._sub = await self._conn.serve(self._changed_subject, self._on_changed, queue="")
        try:
            while not self._stopping:
                self._wake.clear()  # before the tick: a notice that arrives during it is kept
                try:
                    await self.tick()
                except PerdureError as exc:
                    log.warning("ownership.tick_failed", error=str(exc))
                try:
                    async with asyncio.timeout(self._delay()):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            if self._sub is not None:
                await self._sub.stop()

    def _delay(self) -> float:
        """Until the next tick: the renewal period, or just after another member's key expires."""
        delay = self._settings.lease_ttl / 3
        if self._next_expiry is not None:
            delay = min(delay, max(RETRY_FLOOR, self._next_expiry - time.time() + EXPIRY_SLACK))
        return delay

    async def _on_changed(self, data: bytes, headers: dict[str, str], reply: str) -> None:
        if data.decode(errors="replace") != self._name:
            self._wake.set()

    async def tick(self) -> None:
        async with self._lock:
            if not self._stopping:
                self._tick_began = time.monotonic()
                try:
                    await self._tick()
                finally:
                    self._tick_began = None

    async def keep_membership(self) -> None:
        """Re-put the member key while a tick is held up (it is put at the start of each
        tick): a tick waiting seconds for partitions to settle or start must not make this
        runtime look dead to the others. Not once stopping: leaving removes the key."""
        period = self._settings.lease_ttl / 3
        while True:
            await asyncio.sleep(period)
            began = self._tick_began
            if self._stopping or began is None or time.monotonic() - began < period:
                continue
            try:
                await self._put(
                    f"member.{self._name}", Lease(owner=self._name, acquired_at=time.time()), None
                )
            except PerdureError as exc:
                log.warning("ownership.membership_not_renewed", error=str(exc))

    async def _tick(self) -> None:
        put_at = time.time()
        await self._put(f"member.{self._name}", Lease(owner=self._name, acquired_at=put_at), None)
        lapsed = await self._renew()
        members, leases, stamps = await self._read_state()
        self._next_expiry = _next_expiry(stamps, self._name, put_at)
        if self._name not in members:
            members.append(self._name)
        mine = {p for p, m in assign(members, self._settings.partitions).items() if m == self._name}
        lost: list[int] = []
        for partition in lapsed:
            # Renewed too late (a busy or paused process) or with a stale revision (an ack
            # lost): if nobody else holds it, take it back and keep its host running. If
            # someone held it meanwhile, it recreated the consumer and the host restarts.
            if partition in mine and await self._claim(
                partition, leases.get(partition), members, lapsed=True
            ):
                continue
            log.warning("partition.lost", partition=partition, runtime=self._name)
            lost.append(partition)
        # All at once: one by one, each waits for its steps to settle (seconds), and the later
        # ones kept consuming and firing timers meanwhile, next to their new holders.
        await self._release_lost(lost)
        await self._let_go(sorted(set(self.owned) - mine))
        wanted = sorted(mine - set(self.owned) - set(lapsed))
        claimed = await asyncio.gather(*(self._claim(p, leases.get(p), members) for p in wanted))
        if not all(claimed):
            # We joined (or came back): tell the current holders now rather than at their next tick.
            await self._conn.publish_core(self._changed_subject, self._name.encode())

    async def _read_state(self) -> tuple[list[str], dict[int, StoredMessage], dict[str, tuple[float, float]]]:
        """Live members, the partition leases, and when each member's key was stored and
        expires (server clock)."""
        stored = await self._leases.get_many(["member.*", "partition.*"])
        members: list[str] = []
        leases: dict[int, StoredMessage] = {}
        stamps: dict[str, tuple[float, float]] = {}
        for msg in stored:
            key = self._leases.key_of(msg.subject)
            lease = _decode(msg)
            if key.startswith("member.") and lease is not None and lease.owner:
                members.append(lease.owner)
                stamp = _stamp(msg, self._settings.lease_ttl)
                if stamp is not None:
                    stamps[lease.owner] = stamp
            elif key.startswith("partition."):
                leases[int(key.split(".", 1)[1])] = msg
        return members, leases, stamps

    async def _claim(
        self, partition: int, current: StoredMessage | None, members: list[str], *, lapsed: bool = False
    ) -> bool:
        """Take the partition's lease if it is free, ours from a previous life, or held by a runtime
        that is no longer a member (dead: its member key expired); True if taken. ``lapsed``: we
        still run its host (our renewal failed), so there is nothing to start."""
        lease = _decode(current) if current is not None else None
        if lease is not None and lease.owner and lease.owner != self._name and lease.owner in members:
            return False  # its live owner releases it when it sees the new assignment
        try:
            revision = await self._put(
                f"partition.{partition}",
                Lease(owner=self._name, acquired_at=time.time()),
                current.seq if current is not None else 0,
            )
        except HistoryConflict:
            return False  # someone else got it first (or its owner just renewed it)
        self.owned[partition] = revision
        previous = lease.owner if lease is not None and lease.owner != self._name else ""
        if lapsed:
            log.warning("partition.retaken", partition=partition, runtime=self._name, previous=previous)
            if self._on_retake is not None:
                # While the lease was lapsed the partition was not ours: its timers' expiry
                # markers that arrived meanwhile were ignored; they must be replayed.
                await self._on_retake(partition)
            return True
        log.info("partition.acquired", partition=partition, runtime=self._name, previous=previous)
        await self._on_acquire(partition)
        return True

    async def _renew(self) -> list[int]:
        """Re-put every lease we hold with its expected revision, pipelined (one round trip).

        Returns the partitions whose renewal conflicted (the lease expired, or our revision is
        stale); they are no longer counted as owned, and the tick decides what becomes of them.
        """
        now = time.time()
        owned = list(self.owned.items())
        sends = [
            await self._put_nowait(f"partition.{p}", Lease(owner=self._name, acquired_at=now), revision)
            for p, revision in owned
        ]
        lapsed: list[int] = []
        failure: BaseException | None = None
        for (partition, _), outcome in zip(
            owned, await asyncio.gather(*sends, return_exceptions=True), strict=True
        ):
            if isinstance(outcome, HistoryConflict):
                self.owned.pop(partition, None)
                lapsed.append(partition)
            elif isinstance(outcome, BaseException):
                failure = failure or outcome
            else:
                self.owned[partition] = outcome.seq  # type: ignore[attr-defined]
        if failure is not None:
            for partition in lapsed:  # the tick stops here: let the hosts go as before
                log.warning("partition.lost", partition=partition, runtime=self._name)
            await self._release_lost(lapsed)
            raise failure
        return lapsed

    async def _release_lost(self, partitions: list[int]) -> None:
        """Stop the hosts of partitions whose lease is gone, concurrently (each host stops
        consuming and firing at once, then gives its steps under way a bounded time)."""
        outcomes = await asyncio.gather(*(self._on_release(p) for p in partitions), return_exceptions=True)
        for partition, outcome in zip(partitions, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.warning("partition.stop_failed", partition=partition, error=repr(outcome))

    async def still_owns(self, partition: int) -> bool:
        """Whether the stored lease is still ours (a deleted consumer may mean it is not)."""
        if partition not in self.owned:
            return False
        stored = await self._leases.get(f"partition.{partition}")
        lease = _decode(stored)
        return lease is not None and lease.owner == self._name

    async def _let_go(self, partitions: list[int], *, leave: bool = False) -> None:
        """Stop handling ``partitions`` (their steps under way finish, all at once), then release
        their leases (and, when leaving, the membership) in one pipelined round, and say so."""
        if not partitions and not leave:
            return
        revisions = {p: self.owned.pop(p) for p in partitions}
        for partition, outcome in zip(
            partitions,
            await asyncio.gather(*(self._on_release(p) for p in partitions), return_exceptions=True),
            strict=True,
        ):
            if isinstance(outcome, BaseException):
                log.warning("partition.stop_failed", partition=partition, error=repr(outcome))
        now = time.time()
        sends: list[tuple[int | None, asyncio.Future[object]]] = []
        if leave:
            sends.append(
                (
                    None,
                    await self._put_nowait(
                        f"member.{self._name}", Lease(owner="", acquired_at=now), None, ttl=1
                    ),
                )
            )
        for partition, revision in revisions.items():
            free = Lease(owner="", acquired_at=now)
            sends.append((partition, await self._put_nowait(f"partition.{partition}", free, revision, ttl=1)))
        outcomes = await asyncio.gather(*(fut for _, fut in sends), return_exceptions=True)
        for (released, _), sent in zip(sends, outcomes, strict=True):
            if isinstance(sent, HistoryConflict):
                continue  # already taken over: nothing to release
            if isinstance(sent, BaseException):
                log.warning("partition.release_failed", partition=released, error=str(sent))
            elif released is not None:
                log.info("partition.released", partition=released, runtime=self._name)
        await self._conn.publish_core(self._changed_subject, self._name.encode())

    async def release_all(self) -> None:
        """Graceful hand-over: finish the steps under way, release every lease, leave the membership."""
        self._stopping = True
        self._wake.set()
        async with self._lock:
            await self._let_go(sorted(self.owned), leave=True)

    async def _put(self, key: str, lease: Lease, expected: int | None, *, ttl: float | None = None) -> int:
        ack = await (await self._put_nowait(key, lease, expected, ttl=ttl))
        return ack.seq  # type: ignore[attr-defined,no-any-return]

    async def _put_nowait(
        self, key: str, lease: Lease, expected: int | None, *, ttl: float | None = None
    ) -> asyncio.Future[object]:
        ack = await self._leases.put_nowait(
            key,
            codec.encode(lease),
            revision=expected,
            ttl=ttl if ttl is not None else self._settings.lease_ttl,
        )
        # Waited for at most a lease TTL (not the 10 s publish-ack timeout): an ack lost with a
        # NATS restart used to hold the tick for seconds while our leases lapsed and others
        # took them; the next tick renews (a stale revision then means "lapsed", handled).
        return asyncio.ensure_future(_within(ack, self._settings.lease_ttl, key))


async def _within(ack: asyncio.Future[object], timeout: float, key: str) -> object:
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(ack)
    except TimeoutError:
        ack.add_done_callback(lambda f: f.cancelled() or f.exception())  # its late outcome is moot
        raise ConnectionLost(f"the put of lease {key} was not acknowledged within its TTL") from None


def _decode(msg: StoredMessage | None) -> Lease | None:
    if msg is None or not msg.is_value:
        return None
    try:
        return codec.lease.decode(msg.data)
    except msgspec.DecodeError:
        return None


_TTL_RE = re.compile(r"^(\d+)s$")


def _stamp(msg: StoredMessage, default_ttl: float) -> tuple[float, float] | None:
    """When the server stored this entry (its clock) and when it will expire it."""
    stamp = msg.headers.get("Nats-Time-Stamp") or msg.time
    m = _TTL_RE.match(msg.headers.get("Nats-TTL", ""))
    ttl = float(m.group(1)) if m else default_ttl
    head, _, fraction = stamp.rstrip("Z").partition(".")
    try:
        stored = datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
    stored += float(f"0.{fraction}") if fraction.isdigit() else 0.0
    return stored, stored + ttl


def _next_expiry(stamps: dict[str, tuple[float, float]], me: str, put_at: float) -> float | None:
    """The earliest expiry of another member's key, on our clock.

    Our own key, stored at ``put_at`` by our clock, calibrates the server's clock against
    ours (to within the one-way latency), so a skewed clock neither delays a takeover nor
    makes us re-read the leases in a tight loop.
    """
    others = [expires for member, (_, expires) in stamps.items() if member != me]
    if not others:
        return None
    offset = stamps[me][0] - put_at if me in stamps else 0.0
    return min(others) - offset
