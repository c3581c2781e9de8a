"""A pull consumer that keeps pull requests outstanding, so messages arrive without a round trip.

nats-py's ``fetch()`` sends a no-wait probe and then a lingering pull for every batch; on
the hot path that is two round trips per wake-up. Here (as in the newer NATS clients'
``consume``) we keep ``credit`` messages requested at all times: the server pushes each
message to our inbox as soon as it is stored. Credit comes back when the owner has
finished with a message (``release``), which bounds what is in flight.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import nats.errors
import structlog
from nats.aio.msg import Msg as _Msg

from .errors import PerdureError
from .nats_client import Connection, map_errors, nats_core

log = structlog.get_logger("perdure.consumer")

RECENT_ACKS_WINDOW = 5.0  # seconds of acks sent again after a reconnect
RECENT_ACKS_MAX = 10_000


class RecentAcks:
    """The acks a consumer sent in its last few seconds of work, sent again after a reconnect.

    A plain ack (no reply) that reaches a server as it stops is lost without a word, and
    its message then waits the whole ack wait (30 s) to come back (issue 10: an inbox
    message left after a NATS restart). Waiting for every ack's confirmation (``ack_sync``)
    cured it at a request per message on the hot path; acking again after a reconnect
    cures it at no cost while connected. Acking an acked message again is harmless; the
    window runs on the time of the acks themselves, so the acks sent just before a
    disconnect are still here when the reconnect comes, however long it takes."""

    def __init__(self) -> None:
        self._acks: collections.deque[tuple[float, str]] = collections.deque()

    def note(self, reply: str) -> None:
        now = time.monotonic()
        acks = self._acks
        acks.append((now, reply))
        while acks and (acks[0][0] < now - RECENT_ACKS_WINDOW or len(acks) > RECENT_ACKS_MAX):
            acks.popleft()

    def replies(self) -> list[str]:
        return [reply for _, reply in self._acks]


class ConsumerGone(PerdureError):
    """The server deleted the consumer (another runtime took the partition over)."""

    code = "consumer.gone"


@dataclass(slots=True)
class Delivery:
    """One message handed to us by a consumer; acked only when its effects are durable.

    Acks and naks report whether they were sent (a failure is logged, not raised: the
    message is then delivered again after the ack wait, and its step recognised and redone).
    ``release`` gives the message's credit back to the consumer that delivered it, which
    is not always the partition's current one (it is recreated when it is lost).
    """

    subject: str
    data: bytes
    headers: dict[str, str]
    stream_seq: int
    num_delivered: int
    _msg: Any
    _release: Callable[[int], None] | None = None
    _recent: RecentAcks | None = None

    async def ack(self) -> bool:
        """Ack (a plain publish, no round trip); the consumer sends it again after a
        reconnect (``RecentAcks``)."""
        if self._recent is not None:
            self._recent.note(self._msg.reply)
        return await self._reply("ack", self._msg.ack())

    async def nak(self, delay: float | None = None) -> bool:
        return await self._reply("nak", self._msg.nak(delay=delay))

    async def in_progress(self) -> bool:
        return await self._reply("in_progress", self._msg.in_progress())

    async def term(self) -> bool:
        return await self._reply("term", self._msg.term())

    def release(self) -> None:
        if self._release is not None:
            self._release(1)

    async def _reply(self, what: str, sending: Coroutine[Any, Any, Any]) -> bool:
        try:
            with map_errors(f"{what} of {self.subject} #{self.stream_seq}"):
                await sending
            return True
        except PerdureError as exc:
            log.warning("delivery.reply_failed", reply=what, stream_seq=self.stream_seq, error=str(exc))
        except nats.errors.Error as exc:  # e.g. acked twice: a bug here, said out loud
            log.error("delivery.reply_refused", reply=what, stream_seq=self.stream_seq, error=repr(exc))
        return False


def _delivery(
    msg: _Msg, release: Callable[[int], None] | None = None, recent: RecentAcks | None = None
) -> Delivery:
    # Reply subject: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
    # (or the v2 form with domain/account hash prefixed); count tokens from the end.
    tokens = msg.reply.split(".")
    return Delivery(
        subject=msg.subject,
        data=msg.data,
        headers=dict(msg.headers or {}),
        stream_seq=int(tokens[-4]),
        num_delivered=int(tokens[-5]),
        _msg=msg,
        _release=release,
        _recent=recent,
    )


class PullConsumer:
    def __init__(
        self,
        conn: Connection,
        stream: str,
        consumer: str,
        *,
        credit: int,
        expires: float = 30.0,
        idle_heartbeat: float = 5.0,
    ) -> None:
        self._conn = conn
        self._nc = nats_core(conn)
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.name = f"{stream}/{consumer}"
        self._available = credit
        self._outstanding = 0
        self._expires = expires
        self._idle_heartbeat = idle_heartbeat
        self._queue: asyncio.Queue[Delivery | BaseException] = asyncio.Queue()
        self._inbox = ""
        self._sub: Any = None
        self._last_seen = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False
        self._recent_acks = RecentAcks()

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)
        self._conn.on_reconnect(self._reconnected)
        self._last_seen = asyncio.get_running_loop().time()
        self._arm_watchdog()
        await self._pull()

    async def stop(self) -> None:
        self._closed = True
        self._conn.remove_reconnect_listener(self._reconnected)
        if self._watchdog:
            self._watchdog.cancel()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        self._queue.put_nowait(asyncio.CancelledError())

    def release(self, n: int = 1) -> None:
        """Give back ``n`` messages' worth of credit; pulls more when enough is free."""
        self._available += n
        if not self._closed and self._want() >= self._threshold():
            asyncio.get_running_loop().create_task(self._pull())

    async def next_batch(self, limit: int = 1000) -> list[Delivery]:
        """Wait for at least one message, then take whatever else is already here."""
        first = await self._queue.get()
        if isinstance(first, BaseException):
            raise first
        out = [first]
        while len(out) < limit and not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, BaseException):
                self._queue.put_nowait(item)
                break
            out.append(item)
        return out

    # ------------------------------------------------------------------ internals

    def _want(self) -> int:
        return self._available - self._outstanding

    def _threshold(self) -> int:
        return max(1, min(64, self._available // 4))

    async def _pull(self) -> None:
        want = self._want()
        if want <= 0 or self._closed:
            return
        self._outstanding += want
        body = {
            "batch": want,
            "expires": int(self._expires * 1e9),
            "idle_heartbeat": int(self._idle_heartbeat * 1e9),
        }
        try:
            await self._nc.publish(self._next_subject, json.dumps(body).encode(), reply=self._inbox)
        except Exception as exc:  # disconnected: the watchdog or reconnect re-pulls
            self._outstanding -= want
            log.debug("consumer.pull_failed", consumer=self.name, error=str(exc))

    async def _on_msg(self, msg: _Msg) -> None:
        self._last_seen = asyncio.get_running_loop().time()
        status = msg.headers.get("Status") if msg.headers else None
        if not status:
            self._outstanding = max(0, self._outstanding - 1)
            self._available -= 1
            self._queue.put_nowait(_delivery(msg, self.release, self._recent_acks))
            return
        await self._on_status(status, msg)

    async def _on_status(self, status: str, msg: _Msg) -> None:
        headers = msg.headers or {}
        if status == "100":  # idle heartbeat
            return
        if status in ("408", "409") and "Nats-Pending-Messages" in headers:
            # A pull request ended (expired, or its batch was cut short): its credit is free again.
            self._outstanding = max(0, self._outstanding - int(headers["Nats-Pending-Messages"]))
            await self._pull()
            return
        description = str(headers.get("Description", ""))
        if status == "409" and "Consumer Deleted" in description:
            log.info("consumer.deleted", consumer=self.name)
            self._closed = True
            self._queue.put_nowait(ConsumerGone(f"consumer {self.name} was deleted"))
            return
        if status == "503":
            # No responders: the consumer has no leader yet (just created on a cluster, or
            # its leader is moving). Ask again shortly rather than waiting for the watchdog.
            self._outstanding = 0
            asyncio.get_running_loop().call_later(0.25, self._reset)
            return
        if status in ("404", "408", "409"):
            # No messages / request timeout without counts / leadership change: re-pull from scratch.
            self._outstanding = 0
            await self._pull()
            return
        log.warning("consumer.status", consumer=self.name, status=status, description=description)

    def _reset(self) -> None:
        """After a reconnect or silence, outstanding pull requests may be lost: ask again."""
        if self._closed:
            return
        self._outstanding = 0
        asyncio.get_running_loop().create_task(self._pull())

    def _reconnected(self) -> None:
        asyncio.get_running_loop().create_task(self._ack_again())
        self._reset()

    async def _ack_again(self) -> None:
        """The acks of the last seconds before the disconnect, sent again (``RecentAcks``)."""
        replies = self._recent_acks.replies()
        try:
            for reply in replies:
                await self._nc.publish(reply, b"+ACK")
        except Exception as exc:  # disconnected again: the next reconnect sends them
            log.debug("consumer.ack_again_failed", consumer=self.name, error=str(exc))
        else:
            log.debug("consumer.acked_again", consumer=self.name, acks=len(replies))

    def _arm_watchdog(self) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self._idle_heartbeat, self._check_alive)

    def _check_alive(self) -> None:
        silent = asyncio.get_running_loop().time() - self._last_seen
        if silent > 2.5 * self._idle_heartbeat and self._conn.is_connected:
            log.debug("consumer.silent", consumer=self.name, seconds=round(silent, 1))
            self._last_seen = asyncio.get_running_loop().time()
            self._reset()
        self._arm_watchdog()
