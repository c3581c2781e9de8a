"""TimerService: durable timers as KV entries with a TTL, fired on time from memory.

Each timer is a key ``<partition>.<execution>.<run>.<timer>`` in the timers bucket, put
with a TTL rounded *up* to whole seconds: its expiry marker (``Nats-Marker-Reason:
MaxAge``) is the crash-safe backstop that never fires early. The runtime that owns the
partition also keeps an in-process timer for the exact ``fire_at``. Both paths publish the
same ``TimerExpired`` with the same ``Nats-Msg-Id``, so JetStream keeps only the first.

On taking a partition over, a watcher delivers the last entry of every key: live timers
are armed in memory, markers that expired while nobody owned the partition fire now.

So a marker must mean "expired and not yet absorbed", and nothing else: a key whose timer
is cancelled, or whose firing the execution has absorbed, is *purged* (``forget``), which
leaves neither a tombstone nor a marker behind. (Re-putting it with a short TTL instead, as
an earlier version did, left a marker that a restarted runtime could not tell from a real
expiry: it re-fired every timer cancelled in the last hour.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec
import structlog

from perdure.runtime import codec
from perdure.runtime.errors import PerdureError, ScopeClosed
from perdure.runtime.kv_bucket import KVBucket
from perdure.runtime.messages import TimerEntry, TimerExpired
from perdure.runtime.naming import Names
from perdure.runtime.nats_client import Connection, StoredMessage, Subscription
from perdure.runtime.supervisor import Supervisor
from perdure.runtime.timer_ids import TimerId, TimerKind

from .metrics import RuntimeMetrics

log = structlog.get_logger("perdure.timers")


class TimerKey(msgspec.Struct, frozen=True):
    partition: int
    execution_id: str
    run: int
    timer: str

    def key(self) -> str:
        return f"{self.partition}.{self.execution_id}.{self.run}.{self.timer}"

    @classmethod
    def parse(cls, key: str) -> TimerKey | None:
        parts = key.split(".", 3)
        if len(parts) != 4 or not parts[0].isdigit() or not parts[2].isdigit():
            return None
        return cls(int(parts[0]), parts[1], int(parts[2]), parts[3])

    def checkpoint(self) -> TimerKey:
        """The checkpoint key of the activity this attempt key belongs to."""
        timer = TimerId.parse(self.timer)
        assert timer is not None and timer.is_activity, self.timer
        return TimerKey(self.partition, self.execution_id, self.run, TimerId.checkpoint(timer.seq).format())

    @property
    def kind(self) -> TimerKind | None:
        """What the timer is for (None: not a timer id Perdure writes)."""
        timer = TimerId.parse(self.timer)
        return timer.kind if timer is not None else None

    @property
    def msg_id(self) -> str:
        return f"{self.execution_id}:{self.run}:timer:{self.timer}"


class TimerService:
    def __init__(
        self,
        conn: Connection,
        names: Names,
        metrics: RuntimeMetrics | None = None,
        *,
        scope: Supervisor | None = None,
    ) -> None:
        self._metrics = metrics or RuntimeMetrics()
        self._conn = conn
        self._names = names
        self._timers = KVBucket(conn, names, names.timers_bucket)
        self._armed: dict[str, asyncio.TimerHandle] = {}
        self._quiet: set[str] = set()  # fired from memory: their coming expiry marker must not fire
        self._firing = scope if scope is not None else Supervisor("timers")  # firings being published
        self._watchers: dict[int, Subscription] = {}
        self._owned: Callable[[int], bool] = lambda p: True

    def set_ownership(self, owned: Callable[[int], bool]) -> None:
        self._owned = owned

    # ------------------------------------------------------------- from effects

    async def put(self, key: TimerKey, fire_at: float) -> asyncio.Future[object]:
        """Store the timer (TTL backstop) and arm it in memory."""
        k = key.key()
        self.arm(key, fire_at)
        return await self._timers.put_nowait(
            k, codec.encode(TimerEntry(fire_at=fire_at)), ttl=max(0.0, fire_at - time.time())
        )

    async def forget(self, key: TimerKey) -> asyncio.Future[int]:
        """The timer is cancelled, or its firing is absorbed: disarm it and purge its key (no
        marker follows, so no runtime will ever fire it again)."""
        k = key.key()
        self.forget_in_memory(k)
        return await self._timers.purge_nowait(k)

    async def forget_activity(self, key: TimerKey, timers: list[str]) -> asyncio.Future[int]:
        """An activity closed: purge every key under ``a.<seq>.`` (its attempts' records and
        timers, and its checkpoint) in one request. ``key.timer`` is ``a.<seq>``; ``timers``
        are those that may be armed in memory."""
        for timer in timers:
            self.forget_in_memory(msgspec.structs.replace(key, timer=timer).key())
        return await self._timers.purge_nowait(f"{key.key()}.>")

    def forget_in_memory(self, key: str) -> None:
        """Neither armed nor fired from memory any more: its key is purged, or was never
        stored (an eager attempt's timeout, actors/eager_keys.py)."""
        self.disarm(key)
        self._quiet.discard(key)

    def arm(self, key: TimerKey, fire_at: float) -> None:
        k = key.key()
        if k in self._armed:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, fire_at - time.time())
        self._armed[k] = loop.call_at(loop.time() + delay, self._fire_from_memory, key, fire_at)

    def disarm(self, key: str) -> None:
        handle = self._armed.pop(key, None)
        if handle is not None:
            handle.cancel()

    def _fire_from_memory(self, key: TimerKey, fire_at: float) -> None:
        self._metrics.timer_fired("memory", fire_at)
        k = key.key()
        self._armed.pop(k, None)
        self._quiet.add(k)  # the KV marker will follow; the inbox already has this firing
        self._spawn_firing(key)

    def _spawn_firing(self, key: TimerKey) -> None:
        """Publish a firing in a task of the service's scope (it may retry for a while;
        ``stop()`` cancels it), so neither a timer callback nor the watcher waits on the inbox.
        Once stopping, nothing is published: the expiry marker fires it at the next owner."""
        try:
            self._firing.spawn(self._publish_fired(key), name=f"timer:{key.key()}")
        except ScopeClosed:
            log.info("timer.left_to_next_owner", key=key.key())

    async def _publish_fired(self, key: TimerKey) -> None:
        """Put the firing in the inbox, retrying until it is stored (the Nats-Msg-Id makes
        retries harmless): the inbox may refuse for seconds while its leader is elected, and
        the expiry marker is quieted by then. Gives up only when the partition moves away,
        since the new owner's watcher replays the marker."""
        message = codec.encode(TimerExpired(run=key.run, timer=key.timer))
        delay = 0.1
        while True:
            try:
                await self._conn.publish(self._names.inbox(key.execution_id), message, msg_id=key.msg_id)
                return
            except PerdureError as exc:
                log.warning("timer.publish_failed", key=key.key(), error=str(exc), retry_in=delay)
            if not self._owned(key.partition):
                # Its marker must fire it then, here too if the partition comes back to us
                # (a lapsed lease taken back in place replays it): no longer "fired".
                self._quiet.discard(key.key())
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    # ------------------------------------------------------------------ watching

    async def watch_partition(self, partition: int) -> None:
        if partition in self._watchers:
            return
        self._watchers[partition] = await self._timers.watch(f"{partition}.>", self._on_entry)

    async def rewatch_partition(self, partition: int) -> None:
        """Watch the partition's timers afresh (its lease lapsed and was retaken in place):
        the markers ignored while it was not ours are delivered again (the watch starts with
        every key's last entry); timers armed or quieted here stay so."""
        sub = self._watchers.pop(partition, None)
        if sub is None:
            return  # not watched (the host has not started its watch yet): nothing missed
        await sub.stop()
        await self.watch_partition(partition)

    async def unwatch_partition(self, partition: int) -> None:
        sub = self._watchers.pop(partition, None)
        if sub is not None:
            await sub.stop()
        prefix = f"{partition}."
        for k in [k for k in self._armed if k.startswith(prefix)]:
            self.disarm(k)
        self._quiet = {k for k in self._quiet if not k.startswith(prefix)}

    async def stop(self) -> None:
        for partition in list(self._watchers):
            await self.unwatch_partition(partition)
        for k in list(self._armed):
            self.disarm(k)
        await self._firing.stop(timeout=2.0)

    async def _on_entry(self, msg: StoredMessage) -> None:
        k = self._timers.key_of(msg.subject)
        key = TimerKey.parse(k)
        if key is None or key.kind == "checkpoint" or not self._owned(key.partition):
            return  # checkpoints are data, not timers
        if msg.headers.get("Nats-Marker-Reason") == "MaxAge":
            await self._on_expired(key, k)
            return
        if msg.headers.get("KV-Operation") in ("DEL", "PURGE") or not msg.data:
            self.disarm(k)
            return
        if key.kind == "heartbeat":
            self._on_record(k, msg.data)
            return
        try:
            entry = codec.timer_entry.decode(msg.data)
        except msgspec.DecodeError:
            log.warning("timer.bad_entry", key=k)
            return
        if entry.cancelled:
            self.disarm(k)
            self._quiet.add(k)
        else:
            self.arm(key, entry.fire_at)

    def _on_record(self, k: str, data: bytes) -> None:
        try:
            record = codec.activity_record.decode(data)
        except msgspec.DecodeError:
            return
        if record.closed:
            self._quiet.add(k)
        else:
            self._quiet.discard(k)

    async def _on_expired(self, key: TimerKey, k: str) -> None:
        self._armed.pop(k, None)
        if k in self._quiet:
            self._quiet.discard(k)
            return
        self._metrics.timer_fired("marker")
        self._spawn_firing(key)
