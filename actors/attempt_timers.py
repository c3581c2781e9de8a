"""AttemptTimers: the timers an activity attempt owns from the moment it starts running.

The execution actor arms what runs from scheduling (``a.<seq>.<attempt>.s2s``, schedule to
start; ``a.<seq>.s2c``, schedule to close). The runtime that *starts* an attempt arms the rest,
because only it knows when the attempt leaves the queue (issue 10, items 9 and 10):

- ``a.<seq>.<attempt>.to``: the start-to-close timeout, put when the attempt starts. (It was
  put at scheduling, so time spent queued behind busy slots counted against it.) An eager
  attempt starts as it is scheduled, and its timeout is armed in memory by the effect runner
  (stored only if the attempt outlives its run: actors/eager_keys.py).
- ``a.<seq>.<attempt>.s2s``: re-put as cancelled when the attempt starts, with the revision
  it was read at; an attempt whose schedule-to-start timer already fired (or whose activity
  closed, which purges its keys) is not started at all.
- ``a.<seq>.<attempt>.live``: a liveness key with a TTL of ``lease_ttl``, re-put by this
  runtime every ``lease_ttl / 3`` while the attempt runs. If the runtime dies (SIGKILL, lost
  its connection), the key expires within about ``lease_ttl`` and its expiry marker fires
  like any timer: the attempt is retried (or fails) at lease speed, however long its
  timeout. Its value's ``fire_at`` is "never", so only the expiry fires it, not the owner's
  in-memory timer. Chosen over recording the runtime in the attempt's record and scanning on
  a membership lapse: no index to keep, no dependence on runtime names being unique over
  restarts, and a runtime that is alive but cut off from NATS is covered too. The cost is one
  put per ``lease_ttl / 3`` per running attempt, pipelined, and only for attempts that no
  other timer covers as fast: none for eager attempts (the inbox message they hold comes back
  to the partition's next owner, which sends their work items again), none when the
  timeout or the heartbeat timeout is at most ``lease_ttl``.

Every key is under ``a.<seq>.``, so closing the activity purges them with the rest.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import structlog

from perdure.runtime import codec
from perdure.runtime.errors import HistoryConflict, PerdureError
from perdure.runtime.kv_bucket import KVBucket, Put
from perdure.runtime.messages import ActivityTask, TimerEntry
from perdure.runtime.naming import Names, partition_of
from perdure.runtime.nats_client import Connection, StoredMessage
from perdure.runtime.timer_ids import attempt_prefix

from .effects import liveness_timer, record_timer, schedule_to_start_timer, timeout_timer
from .timers import TimerKey

log = structlog.get_logger("perdure.attempts")

NEVER = 10 * 365 * 24 * 3600.0  # a liveness key's fire_at, from now: only its TTL fires it


def _timer_entry(stored: StoredMessage | None) -> TimerEntry | None:
    if stored is None or not stored.is_value:
        return None
    try:
        return codec.timer_entry.decode(stored.data)
    except msgspec.DecodeError:
        return None


class RunningAttempt:
    """One started attempt's keys, stored before its code runs (``stored()``), so the
    owner's purge on close never overtakes them; ``end()`` stops the liveness renewals."""

    __slots__ = ("_live", "_owner", "_writes")

    def __init__(self, owner: AttemptTimers, writes: list[asyncio.Future[Any]], live: str | None) -> None:
        self._owner = owner
        self._writes = writes
        self._live = live

    async def stored(self) -> None:
        if not self._writes:
            return  # an eager attempt's (none), or already waited for
        writes, self._writes = self._writes, []
        results = await asyncio.gather(*writes, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.warning("attempt.timer_put_failed", error=str(result))

    def abandon(self) -> None:
        """The attempt was cancelled here (the runtime is stopping): stop renewing its
        liveness key, which expires and has it retried elsewhere at lease speed."""
        if self._live is not None:
            self._owner.forget(self._live)

    async def end(self, *, reported: bool) -> None:
        """The attempt ended. With an outcome on its way, the execution actor purges the keys
        when it absorbs it. Without one (``make_async()``, its own deadline), this runtime's
        part is over and nothing will report: the liveness key goes now, or it would expire
        and retry an attempt that is only waiting for its token."""
        await self.stored()
        if self._live is None:
            return
        self._owner.forget(self._live)
        if not reported:
            try:
                await (await self._owner.purge(self._live))
            except PerdureError as exc:
                log.warning("attempt.liveness_purge_failed", error=str(exc))


class AttemptTimers:
    def __init__(self, conn: Connection, names: Names, partitions: int, lease_ttl: float) -> None:
        self._conn = conn
        self._partitions = partitions
        self._lease_ttl = lease_ttl
        self._timers = KVBucket(conn, names, names.timers_bucket)
        self._live: dict[str, bytes] = {}  # liveness keys renewed here -> their value

    def _key(self, task: ActivityTask, timer: str) -> str:
        partition = partition_of(task.execution_id, self._partitions)
        return TimerKey(partition, task.execution_id, task.run, timer).key()

    def needs_liveness(self, task: ActivityTask) -> bool:
        """Whether no other timer retries this queued attempt within ``lease_ttl`` if we die."""
        quick = [t for t in (task.options.timeout, task.options.heartbeat) if t is not None]
        return not any(t <= self._lease_ttl for t in quick)

    async def start(self, task: ActivityTask, *, eager: bool) -> RunningAttempt | None:
        """Arm the attempt's timers as it starts; None if it must not start (its
        schedule-to-start timer fired, or the activity closed, while it was queued). If NATS
        cannot be reached the attempt runs anyway, as when a heartbeat fails: its work item
        (or the inbox message an eager attempt holds) is the backstop."""
        if eager:
            # Its timeout is armed by the effect runner (actors/eager_keys.py), and the inbox
            # message it holds recovers it after a crash: no key of its own to put here.
            return RunningAttempt(self, [], None)
        try:
            queued = task.options.schedule_to_start is not None
            if queued and not await self._cancel_schedule_to_start(task):
                return None
            return await self._arm(task)
        except PerdureError as exc:
            log.warning("attempt.timers_not_stored", error=str(exc))
            return RunningAttempt(self, [], None)

    async def _arm(self, task: ActivityTask) -> RunningAttempt:
        writes: list[asyncio.Future[Any]] = []
        now = time.time()
        if task.options.timeout is not None:
            entry = codec.encode(TimerEntry(fire_at=now + task.options.timeout))
            writes.append(
                await self._timers.put_nowait(
                    self._key(task, timeout_timer(task.seq, task.attempt)),
                    entry,
                    ttl=task.options.timeout,
                )
            )
        live: str | None = None
        if self.needs_liveness(task):
            live = self._key(task, liveness_timer(task.seq, task.attempt))
            value = codec.encode(TimerEntry(fire_at=now + NEVER))
            writes.append(await self._timers.put_nowait(live, value, ttl=self._lease_ttl))
            self._live[live] = value
        running = RunningAttempt(self, writes, live)
        # Stored before the code runs: a crash right after the start must find the keys
        # (measured: killed at once, an unflushed put left nothing, and the work item's
        # redelivery 30 s later was the only recovery).
        await running.stored()
        return running

    async def _cancel_schedule_to_start(self, task: ActivityTask) -> bool:
        """Cancel the attempt's schedule-to-start timer (compare-and-set on the revision read);
        False if it fired or the activity closed first: the attempt must not start."""

        def cancelled(stored: StoredMessage | None, conflicts: int) -> Put | None:
            entry = _timer_entry(stored)
            if entry is None or entry.cancelled or entry.fire_at <= time.time():
                return None
            return Put(codec.encode(TimerEntry(fire_at=entry.fire_at, cancelled=True)))

        key = self._key(task, schedule_to_start_timer(task.seq, task.attempt))
        try:
            outcome = await self._timers.update(key, cancelled, attempts=1)
        except HistoryConflict:
            log.info("activity.not_started", reason="schedule_to_start fired meanwhile")
            return False
        if outcome.ack is None:
            log.info("activity.not_started", reason="schedule_to_start passed or activity closed")
            return False
        return True

    async def was_started(self, task: ActivityTask) -> bool:
        """A redelivered work item: whether its attempt started somewhere (its timers then
        retry it), or closed; False if it was pulled but never started, so it is run now."""
        own = attempt_prefix(task.seq, task.attempt)
        prefix = self._timers.subject(self._key(task, own))
        stored = {
            m.subject[len(prefix) + 1 :]: m
            for m in await self._timers.get_many([self._key(task, f"{own}.*")])
        }
        record = stored.get(record_timer(task.seq, task.attempt).rsplit(".", 1)[1])
        if record is None or not record.is_value:
            return True  # closed (its keys are purged), superseded or expired: not ours to run
        try:
            if codec.activity_record.decode(record.data).started:
                return True
        except msgspec.DecodeError:
            return True  # not ours to reason about: its timers decide
        if "to" in stored or "live" in stored:
            return True
        s2s = _timer_entry(stored.get("s2s"))
        return s2s is not None and s2s.cancelled

    def forget(self, key: str) -> None:
        self._live.pop(key, None)

    async def purge(self, key: str) -> asyncio.Future[int]:
        return await self._timers.purge_nowait(key)

    async def run(self) -> None:
        """Renew the liveness key of every attempt running here, every ``lease_ttl / 3``."""
        while True:
            await asyncio.sleep(self._lease_ttl / 3)
            if self._live:
                try:
                    await self._renew()
                except PerdureError as exc:  # NATS unreachable: the next round tries again
                    log.warning("attempt.liveness_renew_failed", error=str(exc))

    async def _renew(self) -> None:
        sends = [
            await self._timers.put_nowait(key, value, ttl=self._lease_ttl)
            for key, value in list(self._live.items())
        ]
        for result in await asyncio.gather(*sends, return_exceptions=True):
            if isinstance(result, BaseException):
                log.warning("attempt.liveness_renew_failed", error=str(result))
