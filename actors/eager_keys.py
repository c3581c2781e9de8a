"""EagerKeys: an eager attempt's KV keys, written only if the attempt needs them.

An attempt that goes through a work item has a record (``a.<seq>.<attempt>.hb``: its nonce,
whether a worker started it) and a start-to-close timer (``.to``) in the timers bucket, and
closing the activity purges them. An eager attempt (``local_activities``) runs in the process
that scheduled it, and most finish in microseconds with a result: for those, every one of
these writes is waste (a record put, a timer put, their acks, their echoes on the timer
watch, and a purge request with its reply: 8 of the 25 messages of a 1-activity workflow).
Crash safety does not need them either: the inbox message of the scheduling step stays
unacked until the outcome is in history, and its redelivery makes the next owner send the
attempt's work item, which brings its own keys.

So an eager attempt starts with no key, its timeout armed in memory only, and writes them
when it needs them:

- its record, when its code reads ``ctx.token`` (a token holder's heartbeats find it) or
  sends a heartbeat (which re-puts it); with the token read, its timeout as a KV timer too
  (the token is most likely handed over);
- its record flagged ``started`` and its timeout as a KV timer, when it ends without an
  outcome (``make_async()``, or its own deadline passed): from then on the token holder or
  the timer reports it, and the inbox message is acked, so the timeout must be durable.

Closing the activity calls ``close()``: from then on no key is written (a heartbeat is told
the attempt is closed). It says whether one was: if none was, and the attempt is its
activity's first with no schedule-to-close timer, nothing is left to purge; otherwise the
purge waits until the writes are stored (``settled``), so it never overtakes them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import structlog

from perdure.runtime.errors import PerdureError, ScopeClosed
from perdure.runtime.messages import ActivityRecord

from .held_ack import Spawn

if TYPE_CHECKING:
    from .timers import TimerKey

log = structlog.get_logger("perdure.eager_keys")

Write = Callable[[], Awaitable[asyncio.Future[Any]]]  # sends a put, returns its ack


class PutRecord(Protocol):
    """Sends the attempt's record (at ``revision``, if given); returns its ack."""

    def __call__(
        self, record: ActivityRecord, *, revision: int | None = None
    ) -> Awaitable[asyncio.Future[Any]]: ...


class EagerKeys:
    __slots__ = (
        "_closed",
        "_loop",
        "_mark_started",
        "_put_record",
        "_put_timeout",
        "_record",
        "_record_write",
        "_spawn",
        "_timeout_write",
        "armed",
        "bare",
        "name",
    )

    def __init__(
        self,
        name: str,
        record: ActivityRecord,
        put_record: PutRecord,
        put_timeout: Write | None,
        mark_started: Callable[[], Awaitable[None]],
        spawn: Spawn,
        *,
        armed: TimerKey | None,
        bare: bool,
    ) -> None:
        self.name = name  # the attempt id, for task names
        # Its activity's first attempt, with no schedule-to-close timer: if this attempt
        # writes no key, its activity has none to purge.
        self.bare = bare
        self.armed = armed  # its timeout's key, armed in memory only (TimerService)
        self._record = record
        self._put_record = put_record
        self._put_timeout = put_timeout
        self._mark_started = mark_started
        self._spawn = spawn
        self._loop = asyncio.get_running_loop()
        self._record_write: asyncio.Task[Any] | None = None  # sends the record, then awaits its ack
        self._timeout_write: asyncio.Task[Any] | None = None
        self._closed = False

    @property
    def written(self) -> bool:
        return self._record_write is not None or self._timeout_write is not None

    # ------------------------------------------------------------ from the actor

    def close(self) -> None:
        """The activity closes: no key is written from now on. ``written`` says whether one
        was (stored, or on its way: purge them after ``settled``)."""
        self._closed = True

    def observe(self) -> bool:
        """The workflow watches the attempt's progress: flag the record still to be written
        (True), or False if it is written, or on its way (the caller updates the stored one
        once ``settled``)."""
        if self._record_write is not None:
            return False
        self._record = msgspec.structs.replace(self._record, observed=True)
        return True

    async def settled(self) -> None:
        """The keys' writes are stored (or failed): a purge sent now comes after them."""
        for write in (self._record_write, self._timeout_write):
            if write is not None:
                with contextlib.suppress(Exception):
                    await write

    # ------------------------------------------------------------ from the attempt

    def token_read(self) -> None:
        """The attempt's code read its token (maybe in a sync activity's thread): store the
        record, which a token holder's heartbeats re-put, and the timeout as a KV timer,
        since the token is most likely handed over (``make_async()``): both are on their
        way before anyone can use the token, and the hand-over only flags the record."""
        if _running_loop() is self._loop:
            self._write_token_keys()
        else:
            self._loop.call_soon_threadsafe(self._write_token_keys)

    def _write_token_keys(self) -> None:
        self._write_record()
        self._write_timeout()

    async def record_stored(self) -> bool:
        """Store the record (a heartbeat re-puts it) unless stored; False if the activity is
        closed (no key may be written any more)."""
        if self._closed:
            return False
        write = self._write_record()
        if write is not None:  # (None: the runtime stops, and the attempt with it)
            await write
        return True

    async def hand_over(self) -> None:
        """The attempt ended without an outcome: store the record flagged ``started`` (no
        recovery re-runs it) and the timeout as a KV timer (nothing else will report it),
        side by side."""
        if self._closed:
            return
        timeout = self._write_timeout()
        if self._record_write is None:
            self._record = msgspec.structs.replace(self._record, started=True)
            write = self._write_record()
            if write is not None:
                await write
        else:
            # Its record was stored when the code read its token: flag it with a put at the
            # revision that wrote it; if another write came between (a token holder's
            # heartbeat, the workflow observing it), read and compare (``mark_started``).
            revision = await self._record_write
            started = msgspec.structs.replace(self._record, started=True)
            if revision is None or not await _stored_at(self._put_record, started, revision):
                await self._mark_started()
        if timeout is not None:
            await timeout

    def _write_timeout(self) -> asyncio.Task[Any] | None:
        if self._closed or self._put_timeout is None or self._timeout_write is not None:
            return self._timeout_write
        try:
            self._timeout_write = self._spawn(_stored(self._put_timeout), f"eager-timeout:{self.name}")
        except ScopeClosed:  # the runtime stops: the next owner redoes the attempt
            return None
        return self._timeout_write

    def _write_record(self) -> asyncio.Task[Any] | None:
        if self._closed:
            return None
        if self._record_write is None:
            record = self._record
            try:
                self._record_write = self._spawn(
                    _stored(lambda: self._put_record(record)), f"eager-record:{self.name}"
                )
            except ScopeClosed:  # the runtime stops: the attempt is cancelled and redone elsewhere
                return None
        return self._record_write


async def _stored(send: Write) -> int | None:
    """Send a put and wait for its ack: the revision it wrote. A failure is logged (None):
    the next owner redoes the attempt from its work item if this runtime cannot write."""
    try:
        ack = await (await send())
    except PerdureError as exc:
        log.warning("eager.key_put_failed", error=str(exc))
        return None
    return getattr(ack, "seq", None)


async def _stored_at(put: PutRecord, record: ActivityRecord, revision: int) -> bool:
    """Put ``record`` if its key is still at ``revision``; False if not (or not stored)."""
    try:
        await (await put(record, revision=revision))
    except PerdureError:
        return False
    return True


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
