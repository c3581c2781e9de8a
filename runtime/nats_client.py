"""The connection to NATS: the one place (with ``nats_consumer``/``nats_admin``) that imports nats-py.

nats-py types (``Msg``, ``PubAck``) never leave this module: upstream is migrating to a
new JetStream API, so everything above speaks ``Ack`` and ``StoredMessage``. nats-py
exceptions are mapped to Perdure's here, through ``map_errors``.

Publishing is pipelined: ``publish_nowait`` sends a JetStream publish and returns a future
for its ack, so a decision step can send all its side effects and then await them together.

Size: about 920 lines, over the ~400 of the house rule. It is the one boundary over nats-py's
core client (rule 4), and its publishes, direct-get reads and watches share the connection's
muxed reply subscriptions; the reads (``get_last`` .. ``_direct_batch``) are the next piece to
move into a module of their own, with the mux as a type they share.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as _NatsClient
from nats.aio.msg import Msg as _Msg

from .connect_options import ConnectOptions
from .errors import (
    ConfigurationError,
    ConnectionLost,
    HistoryConflict,
    PayloadTooLarge,
    PerdureError,
    PermissionDenied,
    Unavailable,
)
from .limits import payload_limit
from .nats_access import PermissionWatch, encrypted, login_description, not_encrypted, refusal
from .nats_connect import ClosureWatch, close_quickly, first_connect, geturl
from .publish_resend import ResendSchedule, ResentPublish
from .settings import connect_timeout_from_env
from .urls import check_urls, redact_url, split_urls

log = structlog.get_logger("perdure.nats")
T = TypeVar("T")

# JetStream error codes we act on.
WRONG_LAST_SEQUENCE = 10071
KV_KEY_EXISTS = 10164


class _ApiErr(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAckBody(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiErr | None = None


_pub_ack_decoder = msgspec.json.Decoder(_PubAckBody)


class _PurgeBody(msgspec.Struct):
    success: bool = False
    purged: int = 0
    error: _ApiErr | None = None


_purge_decoder = msgspec.json.Decoder(_PurgeBody)


@dataclass(frozen=True, slots=True)
class Ack:
    stream: str
    seq: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class StoredMessage:
    subject: str
    seq: int
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)
    time: str = ""

    @property
    def is_value(self) -> bool:
        """A value: not an empty delete/purge entry, not the server's expiry marker."""
        return bool(self.data) and "Nats-Marker-Reason" not in self.headers


class SequenceConflict(HistoryConflict):
    """An append with an expected last sequence lost the race."""


def _api_error(subject: str, err: _ApiErr) -> PerdureError:
    if err.err_code in (WRONG_LAST_SEQUENCE, KV_KEY_EXISTS):
        return SequenceConflict(f"conflicting write to {subject}: {err.description}")
    return PerdureError(f"JetStream refused publish to {subject}: {err.description} ({err.err_code})")


_PURGE = object()  # an ack mux entry's kind: the reply to a purge request


def _publish_outcome(subject: str, msg: _Msg) -> Ack | PerdureError:
    """What a publish's reply says: its ``Ack``, or the error to raise."""
    if msg.headers and msg.headers.get("Status") == "503":
        # No stream took it: transient right after a restart or during a leader election
        # (measured: a complete answered config.invalid then), or not provisioned at all.
        return Unavailable(
            f"no JetStream stream stored {subject}: JetStream is unavailable (restarting?) "
            "or the namespace is not provisioned"
        )
    try:
        body = _pub_ack_decoder.decode(msg.data)
    except msgspec.DecodeError as exc:
        return PerdureError(f"unreadable publish ack for {subject}: {exc}")
    if body.error is not None:
        return _api_error(subject, body.error)
    return Ack(body.stream, body.seq, body.duplicate)


@contextlib.contextmanager
def map_errors(what: str) -> Iterator[None]:
    """Turn nats-py exceptions into Perdure's, saying what we were doing."""
    try:
        yield
    except nats.errors.MaxPayloadError:
        # nats-py refuses a payload over max_payload before sending (``_check_fits`` also
        # counts headers, so this is the last line of defence).
        raise PayloadTooLarge(f"{what}: the message exceeds the NATS server's max_payload") from None
    except nats.errors.NoRespondersError:
        raise ConfigurationError(
            f"{what}: no JetStream stream or service answers; is the namespace provisioned "
            "and a runtime running?"
        ) from None
    except (nats.errors.ConnectionClosedError, nats.errors.StaleConnectionError) as exc:
        raise ConnectionLost(f"{what}: connection to NATS closed ({exc})") from None
    except nats.js.errors.APIError as exc:
        if exc.err_code in (WRONG_LAST_SEQUENCE, KV_KEY_EXISTS):
            raise SequenceConflict(f"{what}: {exc.description}") from None
        raise PerdureError(f"{what}: JetStream error {exc.err_code}: {exc.description}") from None
    except (TimeoutError, nats.errors.TimeoutError):
        raise ConnectionLost(f"{what}: NATS did not answer in time") from None


def _headers(
    headers: dict[str, str] | None,
    msg_id: str | None,
    expected_last_subject_seq: int | None,
    ttl: float | None,
) -> dict[str, str] | None:
    if msg_id is None and expected_last_subject_seq is None and ttl is None:
        return headers
    out = dict(headers) if headers else {}
    if msg_id is not None:
        out["Nats-Msg-Id"] = msg_id
    if expected_last_subject_seq is not None:
        out["Nats-Expected-Last-Subject-Sequence"] = str(expected_last_subject_seq)
    if ttl is not None:
        out["Nats-TTL"] = f"{ttl_seconds(ttl)}s"
    return out


def wire_size_bound(data: bytes, headers: dict[str, str] | None) -> int:
    """At least ``wire_size``, from character counts (a character is at most 4 UTF-8 bytes)."""
    return len(data) + (_header_bound(headers) if headers else 0)


def _header_bound(headers: dict[str, str]) -> int:
    return 12 + 4 * (sum(map(len, headers)) + sum(map(len, headers.values())) + 4 * len(headers))


def wire_size(data: bytes, headers: dict[str, str] | None) -> int:
    """The size nats-server checks against ``max_payload``: the payload and the header block
    (``NATS/1.0\r\n``, ``key: value\r\n`` per header, ``\r\n``), as nats-py writes it."""
    if not headers:
        return len(data)
    block = len(b"NATS/1.0\r\n\r\n") + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())
    return len(data) + block


def ttl_seconds(seconds: float) -> int:
    """Per-message TTLs are whole seconds, at least 1; round up so a timer never fires early."""
    whole = int(seconds)
    return max(1, whole if whole == seconds else whole + 1)


class Connection:
    """A NATS connection with the JetStream operations Perdure needs, typed and pipelined."""

    def __init__(self, nc: _NatsClient, *, ack_timeout: float = 10.0) -> None:
        self._nc = nc
        self._ack_timeout = ack_timeout
        # Replies to pipelined requests (publish acks, purges), routed by the token ending
        # their reply subject: (future, what it was for, its deadline, what the reply is to
        # (``None``: a publish, ``_PURGE``, or the ``ResentPublish`` a copy belongs to), the
        # subject sent to). Oldest first: one timer (``_expire_acks``) serves them all
        # instead of a timer per publish (a timer handle, a heap push and a cancel each).
        self._acks: dict[bytes, tuple[asyncio.Future[Any], str, float, object, str]] = {}
        self._resends = ResendSchedule(self._resend)
        self._acks_timer: asyncio.TimerHandle | None = None
        self._ack_prefix = b""
        self._ack_counter = 0
        self._ack_sub: Any = None
        self._reconnect_listeners: list[Callable[[], None]] = []
        self._watch = ClosureWatch("")
        self._reads: dict[bytes, asyncio.Queue[_Msg]] = {}
        self._read_prefix = b""
        self._read_counter = 0
        self._read_sub: Any = None
        self._denied = PermissionWatch()  # operations failed at once on a permissions violation

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def connect(
        cls,
        servers: str | list[str],
        *,
        name: str = "perdure",
        options: ConnectOptions | None = None,
        timeout: float | None = None,
    ) -> Connection:
        """Connect with ``options`` (authentication, TLS; default: the ``PERDURE_*`` variables),
        giving up after ``timeout`` seconds (``PERDURE_CONNECT_TIMEOUT``, 10 s).

        Only the first connect is bounded: once connected, a lost connection is re-established
        for as long as it takes. What waiting cannot cure fails at once: a malformed URL
        (``ConfigurationError``), a refused login or TLS handshake (``NotAuthenticated``,
        ``TLSRefused``). A refused connection, a host that does not resolve or a server that
        does not answer are retried until the bound, then raise ``ConnectionLost`` naming the
        (redacted) URL and the last cause.
        """
        options = ConnectOptions.from_env() if options is None else options
        urls = split_urls(servers)
        check_urls(urls)
        shown = redact_url(", ".join(urls))
        how = login_description(urls, options.describe())
        bound = connect_timeout_from_env() if timeout is None else timeout
        watch = ClosureWatch(shown)
        holder: list[Connection] = []
        first_errors: list[BaseException] = []  # said once, in the error, not every 250 ms

        async def reconnected() -> None:
            watch.reconnected()
            if holder:
                log.info("nats.reconnected", url=holder[0].connected_url)
                holder[0]._notify_reconnect()

        async def disconnected() -> None:
            if holder and not watch.closing:
                log.warning("nats.disconnected")

        async def error(exc: Exception) -> None:
            if not holder:  # first connect: stop at once when retrying cannot help
                refused = refusal(exc, shown, how)
                if refused is not None:
                    raise refused
                first_errors.append(exc)
            elif holder[0]._denied.report(exc) is not None:
                log.warning("nats.permission_denied", error=redact_url(str(exc)))
            elif not watch.closing:
                log.warning("nats.error", error=redact_url(str(exc)))
                watch.refused_login(exc)

        async def closed() -> None:
            if holder:
                watch.closed(holder[0]._nc.last_error)

        nats_options: dict[str, Any] = {
            "servers": urls,
            "name": name,
            "reconnect_time_wait": 0.25,
            "ping_interval": 5,
            "max_outstanding_pings": 3,
            "reconnected_cb": reconnected,
            "disconnected_cb": disconnected,
            "error_cb": error,
            "closed_cb": closed,
            "pending_size": 64 * 1024 * 1024,
            "flush_timeout": 30,
            **options.nats_kwargs(),
        }
        nc = await first_connect(nats_options, bound, shown, first_errors)
        if options.tls_requested and not encrypted(nc):
            await close_quickly(nc)
            raise not_encrypted(shown)
        conn = cls(nc)
        conn._watch = watch
        conn._denied = PermissionWatch(options.inbox_prefix or "_INBOX")
        conn._denied.on_denied(conn._fail_denied)
        watch.bind(nc.close, conn._fail_acks)
        holder.append(conn)
        await conn._start_ack_mux()
        await conn._start_read_mux()
        await conn._check_reply_permission()
        return conn

    async def _check_reply_permission(self) -> None:
        """A user that may not receive replies would send requests and never hear back."""
        # nats-py writes a PING straight to the socket, ahead of SUBs still in its buffer: the
        # first round trip lets its flusher send them, the second one's PONG then comes after
        # the server's verdict on them (one flush missed 4 refusals in 40 connects).
        with contextlib.suppress(Exception):
            for _ in range(2):
                await self._nc.flush(timeout=5)
        refused = self._denied.inbox_refusal()
        if refused is not None:
            await self.close()
            raise refused

    def _fail_acks(self, error: ConnectionLost) -> None:
        self._resends.close()
        if self._acks_timer is not None:
            self._acks_timer.cancel()
            self._acks_timer = None
        for fut, *_ in self._acks.values():
            if not fut.done():
                fut.set_exception(error)
        self._acks.clear()

    def _fail_denied(self, subject: str, error: PermissionDenied) -> None:
        """The server refused publishes to ``subject``: their acks will never come."""
        for token, (fut, _, _, _, sent_to) in list(self._acks.items()):
            if sent_to.lower() == subject:
                del self._acks[token]
                if not fut.done():
                    fut.set_exception(error)

    @property
    def lost(self) -> ConnectionLost | None:
        """Why NATS closed this connection for good (None while it lives, or if we closed it)."""
        return self._watch.lost

    async def wait_closed(self) -> ConnectionLost | None:
        """Wait until the connection is closed for good; the error if we did not close it."""
        return await self._watch.wait()

    async def unless_closed(self, work: Awaitable[T]) -> T:
        """``await work``, unless the connection closes for good first: then ``ConnectionLost``.
        A wait on a watch (``handle.result()``) would otherwise wait for ever: when nats-py's
        own close fails on the dead socket, its subscriptions are never ended. The closure
        cancels the waiting task (``ClosureWatch.waiting``): no task or wait set per call."""
        watch = self._watch
        watch.check_open()
        task = asyncio.current_task()
        assert task is not None
        watch.waiting.add(task)
        try:
            return await work
        except asyncio.CancelledError:
            if task not in watch.interrupted:
                raise  # our caller's cancellation
            task.uncancel()
            watch.check_open()
            raise ConnectionLost("the connection to NATS was closed") from None
        finally:
            watch.waiting.discard(task)
            watch.interrupted.discard(task)

    async def close(self) -> None:
        self._watch.closing = True
        self._fail_acks(ConnectionLost("connection closed before the ack arrived"))
        with contextlib.suppress(Exception):
            await self._nc.drain()
        with contextlib.suppress(Exception):
            await self._nc.close()
        self._watch.closed(None)

    @property
    def is_connected(self) -> bool:
        return self._nc.is_connected

    @property
    def connected_url(self) -> str:
        """The server this connection uses now, credentials redacted."""
        return redact_url(geturl(self._nc))

    @property
    def max_payload(self) -> int:
        """The server's ``max_payload`` (from its INFO): payload plus headers, in bytes."""
        return int(self._nc.max_payload)

    @property
    def payload_limit(self) -> int:
        """The largest user payload (input, result, signal, details) Perdure accepts."""
        return payload_limit(self.max_payload)

    def check_fits(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        """Refuse a message the server would refuse: it would close this connection for it
        (``maximum payload exceeded``), failing everything else in flight on it."""
        if wire_size_bound(data, headers) <= self._nc.max_payload:
            return  # the hot path: surely fits, no header encoded to count its bytes
        size = wire_size(data, headers)
        if size > self.max_payload:
            raise PayloadTooLarge(
                f"message to {subject} is {size} bytes with its headers; "
                f"the NATS server's max_payload is {self.max_payload} bytes",
                size=size,
                limit=self.max_payload,
            )

    def on_reconnect(self, listener: Callable[[], None]) -> None:
        self._reconnect_listeners.append(listener)

    def remove_reconnect_listener(self, listener: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._reconnect_listeners.remove(listener)

    def _notify_reconnect(self) -> None:
        for listener in list(self._reconnect_listeners):
            listener()

    def new_inbox(self) -> str:
        return self._nc.new_inbox()

    # ------------------------------------------------------------ JetStream publish

    async def _start_read_mux(self) -> None:
        """One subscription for the replies of every batched read (a history replay must not
        cost a SUB/UNSUB of its own): replies are routed by the token ending their subject."""
        inbox = self._nc.new_inbox()
        self._read_prefix = (inbox + ".").encode()
        self._read_sub = await self._nc.subscribe(inbox + ".*", cb=self._on_read)

    async def _on_read(self, msg: _Msg) -> None:
        queue = self._reads.get(msg.subject.encode()[len(self._read_prefix) :])
        if queue is not None:
            queue.put_nowait(msg)

    async def _start_ack_mux(self) -> None:
        inbox = self._nc.new_inbox()
        self._ack_prefix = (inbox + ".").encode()
        self._ack_sub = await self._nc.subscribe(inbox + ".*", cb=self._on_ack)

    async def _on_ack(self, msg: _Msg) -> None:
        token = msg.subject.encode()[len(self._ack_prefix) :]
        entry = self._acks.pop(token, None)
        if entry is None:
            return
        fut, subject, _, kind, _ = entry
        if kind is _PURGE:
            if not fut.done():
                self._on_purged(fut, subject, msg)
            return
        outcome = _publish_outcome(subject, msg)
        if isinstance(kind, ResentPublish):
            kind.answered(outcome)  # one copy's answer: the publish decides (publish_resend.py)
        elif fut.done():
            return
        elif isinstance(outcome, Ack):
            fut.set_result(outcome)
        else:
            fut.set_exception(outcome)

    @staticmethod
    def _on_purged(fut: asyncio.Future[Any], subject: str, msg: _Msg) -> None:
        try:
            body = _purge_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            fut.set_exception(PerdureError(f"unreadable purge reply for {subject}: {exc}"))
            return
        if body.error is not None:
            fut.set_exception(PerdureError(f"JetStream refused to purge {subject}: {body.error.description}"))
        else:
            fut.set_result(body.purged)

    def _expire_acks(self) -> None:
        """Fail the acks past their deadline (the oldest come first), then wait for the next."""
        self._acks_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for token, (fut, about, deadline, kind, _) in list(self._acks.items()):
            if deadline > now:
                self._acks_timer = loop.call_at(deadline, self._expire_acks)
                return
            del self._acks[token]
            late = ConnectionLost(f"JetStream did not acknowledge the publish to {about} in time")
            if isinstance(kind, ResentPublish):
                kind.answered(late)
            elif not fut.done():
                fut.set_exception(late)

    async def publish_nowait(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        msg_id: str | None = None,
        expected_last_subject_seq: int | None = None,
        ttl: float | None = None,
    ) -> asyncio.Future[Ack]:
        """Send a JetStream publish; the returned future resolves with its ack."""
        hdrs = _headers(headers, msg_id, expected_last_subject_seq, ttl)
        return await self._send_expecting_reply(subject, data, headers=hdrs, about=subject, kind=None)

    async def publish_resent(
        self,
        subject: str,
        data: bytes,
        *,
        expected_last_subject_seq: int,
        resend_after: float,
        resend_for: float,
    ) -> Ack:
        """A JetStream publish with an expected last sequence, sent again while unanswered
        (runtime/publish_resend.py): the first copy stored, or a conflict, decides."""
        headers = _headers(None, None, expected_last_subject_seq, None)
        self.check_fits(subject, data, headers)
        loop = asyncio.get_running_loop()
        publish = ResentPublish(
            loop.create_future(),
            subject,
            data,
            headers,
            now=loop.time(),
            resend_after=resend_after,
            resend_for=resend_for,
        )
        await self._send_copy(publish)
        self._resends.add(publish)
        return await publish.fut  # type: ignore[no-any-return]

    async def _send_copy(self, publish: ResentPublish) -> None:
        token = self._register(publish.fut, publish.subject, publish, publish.subject)
        publish.outstanding += 1
        try:
            await self._send_with_token(token, publish.subject, publish.data, publish.headers, "publish to")
        except Exception:
            publish.outstanding -= 1
            raise

    async def _resend(self, publish: ResentPublish) -> None:
        """Another copy (``ResendSchedule``); a copy that cannot be sent counts as refused."""
        log.warning("nats.publish_sent_again", subject=publish.subject)
        try:
            await self._send_copy(publish)
        except Exception as exc:
            publish.outstanding += 1  # counted as a copy, refused at once
            publish.answered(exc)

    async def purge_nowait(self, stream: str, subject: str) -> asyncio.Future[int]:
        """Remove every message of ``subject`` (wildcards allowed) from ``stream``; the future
        resolves with how many went. Unlike a KV delete or a TTL expiry, a purge leaves no
        tombstone and no delete marker behind (measured on nats-server 2.15)."""
        return await self._send_expecting_reply(
            f"$JS.API.STREAM.PURGE.{stream}",
            msgspec.json.encode({"filter": subject}),
            headers=None,
            about=subject,
            kind=_PURGE,
        )

    async def _send_expecting_reply(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None,
        about: str,
        kind: object,
    ) -> asyncio.Future[Any]:
        """Send with a reply subject of the ack mux; the future resolves when ``_on_ack``
        routes the reply (or fails after ``ack_timeout``)."""
        if wire_size_bound(data, headers) > self._nc.max_payload:
            self.check_fits(subject, data, headers)  # may fit all the same: counted exactly
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        token = self._register(fut, about, kind, subject)
        what = "purge" if kind is _PURGE else "publish to"
        await self._send_with_token(token, subject, data, headers, what, about=about)
        return fut

    async def _send_with_token(
        self,
        token: bytes,
        subject: str,
        data: bytes,
        headers: dict[str, str] | None,
        what: str,
        *,
        about: str | None = None,
    ) -> None:
        """Publish with the ack mux's reply subject for ``token``; if it cannot be sent, the
        token is dropped and the error is raised as ``<what> <about>`` (Perdure's errors)."""
        try:
            await self._nc.publish(subject, data, reply=(self._ack_prefix + token).decode(), headers=headers)
        except Exception:
            self._acks.pop(token, None)
            with map_errors(f"{what} {about or subject}"):
                raise

    def _register(self, fut: asyncio.Future[Any], about: str, kind: object, subject: str) -> bytes:
        """A reply token of the ack mux for ``fut``, failed by ``_expire_acks`` if unanswered."""
        loop = asyncio.get_running_loop()
        self._ack_counter += 1
        token = str(self._ack_counter).encode()
        self._acks[token] = (fut, about, loop.time() + self._ack_timeout, kind, subject)
        if self._acks_timer is None:
            self._acks_timer = loop.call_later(self._ack_timeout, self._expire_acks)
        return token

    async def publish(self, subject: str, data: bytes, **kw: Any) -> Ack:
        fut = await self.publish_nowait(subject, data, **kw)
        return await fut

    async def publish_core(
        self, subject: str, data: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        """A plain NATS publish (no JetStream ack): replies, notifications."""
        self.check_fits(subject, data, headers)
        with map_errors(f"publish to {subject}"):
            await self._nc.publish(subject, data, headers=headers)

    # ---------------------------------------------------------------- direct reads

    async def get_last(self, stream: str, subject: str, timeout: float = 10.0) -> StoredMessage | None:
        """The last message stored on ``subject`` (direct get), or None.

        A read is idempotent, so it is retried (briefly, within ``timeout``) when the request
        is lost with a dying node or meets a stream whose leader is being elected.
        """
        body = msgspec.json.encode({"last_by_subj": subject})
        deadline = asyncio.get_running_loop().time() + timeout
        attempt_timeout = 2.0
        while True:
            self._watch.check_open()  # closed for good: say so now, not after the retries
            try:
                with map_errors(f"read {subject}"), self._denied.guard(f"$JS.API.DIRECT.GET.{stream}"):
                    msg = await self._nc.request(
                        f"$JS.API.DIRECT.GET.{stream}", body, timeout=min(attempt_timeout, timeout)
                    )
                return _stored(msg)
            except (ConnectionLost, ConfigurationError):
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0.25:
                    raise
                await asyncio.sleep(0.25)
                attempt_timeout = min(remaining, attempt_timeout * 2)

    async def read_subject(
        self, stream: str, subject: str, *, start_seq: int = 1, batch: int = 1000, timeout: float = 10.0
    ) -> list[StoredMessage]:
        """Every message on ``subject`` from ``start_seq``, by batched direct gets (retried
        like ``get_last``)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            self._watch.check_open()
            try:
                return await self._read_all(stream, subject, start_seq, batch, min(timeout, 5.0))
            except (ConnectionLost, ConfigurationError):
                if deadline - asyncio.get_running_loop().time() <= 0.25:
                    raise
                await asyncio.sleep(0.25)

    async def read_batch(
        self, stream: str, subject: str, *, start_seq: int, batch: int, timeout: float = 10.0
    ) -> tuple[list[StoredMessage], bool]:
        """Up to ``batch`` messages on ``subject`` from ``start_seq`` (one batched direct get),
        and whether more remain after them (a page of a listing, client/index_pages.py)."""
        self._watch.check_open()
        return await self._read_batch(stream, subject, start_seq, batch, timeout)

    async def _read_all(
        self, stream: str, subject: str, start_seq: int, batch: int, timeout: float
    ) -> list[StoredMessage]:
        out: list[StoredMessage] = []
        seq = start_seq
        while True:
            chunk, more = await self._read_batch(stream, subject, seq, batch, timeout)
            out.extend(chunk)
            if not more or not chunk:
                return out
            seq = chunk[-1].seq + 1

    async def get_multi_last(
        self, stream: str, subjects: list[str], timeout: float = 5.0
    ) -> list[StoredMessage]:
        """The last message of every subject matching ``subjects`` (wildcards allowed), one request."""
        return await self._collect(
            stream, {"multi_last": subjects, "batch": 10_000}, what=", ".join(subjects), timeout=timeout
        )

    async def scan_last(self, stream: str, subject: str, timeout: float = 60.0) -> list[StoredMessage]:
        """The last message of every subject under ``subject`` (a KV listing), however many.

        An ordered consumer delivering the last message per subject, read until the server
        says nothing is pending.
        """
        from nats.js.api import DeliverPolicy

        js = self._nc.jetstream()
        with (
            map_errors(f"list {subject}"),
            self._denied.guard(f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}"),
        ):
            info = await js.stream_info(stream)
            if info.state.messages == 0:
                return []
            queue: asyncio.Queue[_Msg] = asyncio.Queue()

            async def collect(msg: _Msg) -> None:
                queue.put_nowait(msg)

            sub = await js.subscribe(
                subject,
                stream=stream,
                cb=collect,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                headers_only=False,
            )
            out: list[StoredMessage] = []
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        msg = await queue.get()
                        meta = msg.metadata
                        out.append(
                            StoredMessage(
                                msg.subject, meta.sequence.stream, msg.data, dict(msg.headers or {})
                            )
                        )
                        if meta.num_pending == 0:
                            return out
            finally:
                await sub.unsubscribe()

    async def _read_batch(
        self, stream: str, subject: str, seq: int, batch: int, timeout: float
    ) -> tuple[list[StoredMessage], bool]:
        request = {"seq": seq, "next_by_subj": subject, "batch": batch}
        out: list[StoredMessage] = []
        more = await self._direct_batch(stream, request, out, what=subject, timeout=timeout)
        return out, more

    async def _collect(
        self, stream: str, request: dict[str, Any], *, what: str, timeout: float
    ) -> list[StoredMessage]:
        out: list[StoredMessage] = []
        await self._direct_batch(stream, request, out, what=what, timeout=timeout)
        return out

    async def _direct_batch(
        self, stream: str, request: dict[str, Any], out: list[StoredMessage], *, what: str, timeout: float
    ) -> bool:
        """Send a batched direct get; collect replies until end-of-batch. True if more remain."""
        self._read_counter += 1
        token = str(self._read_counter).encode()
        queue: asyncio.Queue[_Msg] = asyncio.Queue()
        self._reads[token] = queue
        with map_errors(f"read {what}"), self._denied.guard(f"$JS.API.DIRECT.GET.{stream}"):
            try:
                await self._nc.publish(
                    f"$JS.API.DIRECT.GET.{stream}",
                    msgspec.json.encode(request),
                    reply=(self._read_prefix + token).decode(),
                )
                async with asyncio.timeout(timeout):
                    while True:
                        msg = await queue.get()
                        status = msg.headers.get("Status") if msg.headers else None
                        if status == "404":
                            return False
                        if status == "204":  # end of batch
                            return int((msg.headers or {}).get("Nats-Num-Pending", "0")) > 0
                        if status:
                            raise PerdureError(f"direct get of {what} failed: {status} {msg.headers}")
                        stored = _stored(msg)
                        if stored is not None:
                            out.append(stored)
            finally:
                self._reads.pop(token, None)

    # ------------------------------------------------------------ request / reply

    async def request(
        self, subject: str, data: bytes, *, timeout: float = 5.0, headers: dict[str, str] | None = None
    ) -> bytes:
        self.check_fits(subject, data, headers)
        with map_errors(f"request to {subject}"), self._denied.guard(subject):
            try:
                msg = await self._nc.request(subject, data, timeout=timeout, headers=headers)
            except nats.errors.NoRespondersError:
                # No runtime serves the subject at this instant (a restart, runtimes starting):
                # nothing received it, so it is safe to send again.
                raise Unavailable(
                    f"no runtime answers {subject}: is one running for this namespace?"
                ) from None
        return msg.data

    async def serve(
        self, subject: str, handler: Callable[[bytes, dict[str, str], str], Awaitable[None]], *, queue: str
    ) -> Subscription:
        """Serve requests on ``subject`` in a queue group; ``handler(data, headers, reply)``."""

        async def on_msg(msg: _Msg) -> None:
            await handler(msg.data, dict(msg.headers or {}), msg.reply)

        with map_errors(f"subscribe to {subject}"):
            sub = await self._nc.subscribe(subject, queue=queue, cb=on_msg)
        return Subscription(sub)

    async def subscribe(self, subject: str) -> tuple[Subscription, AsyncIterator[StoredMessage]]:
        """A core subscription delivering ``StoredMessage``s (seq 0), live when this returns:
        the server has its interest (a flush), so a publish sent after it, from any
        connection, reaches it. (Without the flush, a publish from another connection could
        overtake the SUB and find no subscriber.)"""
        with map_errors(f"subscribe to {subject}"):
            sub = await self._nc.subscribe(subject)
        await self.flush()

        async def messages() -> AsyncIterator[StoredMessage]:
            async for msg in sub.messages:
                yield StoredMessage(msg.subject, 0, msg.data, dict(msg.headers or {}))

        return Subscription(sub), messages()

    async def partition_count(self, stream: str) -> int:
        """N of the stream's ``partition(N, ...)`` subject transform."""
        with map_errors(f"read stream {stream}"), self._denied.guard(f"$JS.API.STREAM.INFO.{stream}"):
            info = await self._nc.jetstream().stream_info(stream)
        transform = info.config.subject_transform
        match = re.search(r"partition\((\d+)", transform.dest if transform else "")
        if match is None:
            raise ConfigurationError(f"stream {stream} is not partitioned; is it a Perdure inbox?")
        return int(match.group(1))

    async def flush(self, timeout: float = 5.0) -> None:
        """Return once the server has read everything sent on this connection before the call.

        Two round trips: nats-py writes a PING straight to the socket, ahead of the commands
        still in its send buffer (a SUB, a PUB), so the first PONG can come back before the
        server has read them; by then its flusher has written them (it was woken before the
        PING went out), and the second PING follows them. (With one, a publish from another
        connection once found no subscriber: 503 no responders, then a hang in CI.)"""
        with map_errors("flush"):
            # nats-py annotates ``int`` but uses it as an ``asyncio`` timeout: fractions work.
            await self._nc.flush(timeout=timeout)  # type: ignore[arg-type]
            await self._nc.flush(timeout=timeout)  # type: ignore[arg-type]

    # ------------------------------------------------------------ KV-style watch

    async def watch(
        self,
        stream: str,
        subject: str,
        callback: Callable[[StoredMessage], Awaitable[None]],
        *,
        last_per_subject: bool = True,
    ) -> Subscription:
        """An ordered push consumer over ``subject`` (KV watch without nats-py's folding of ops)."""
        from nats.js.api import DeliverPolicy

        async def on_msg(msg: _Msg) -> None:
            meta = msg.metadata
            await callback(
                StoredMessage(msg.subject, meta.sequence.stream, msg.data, dict(msg.headers or {}))
            )

        js = self._nc.jetstream()
        with map_errors(f"watch {subject}"), self._denied.guard(f"$JS.API.CONSUMER.CREATE.{stream}"):
            sub = await js.subscribe(
                subject,
                stream=stream,
                cb=on_msg,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT if last_per_subject else DeliverPolicy.NEW,
                # nats-py recreates an ordered consumer whose node died after two heartbeat
                # intervals without one: 1 s here, not 5 s (a result reached handle.result()
                # 11-14 s late after a cluster node died; tests/test_cluster.py).
                idle_heartbeat=1.0,
            )
        return Subscription(sub)

    # ------------------------------------------------------------ inspection

    async def stream_info(
        self, stream: str, *, subjects_filter: str | None = None, timeout: float = 5.0
    ) -> Any:
        """The stream's ``StreamInfo`` (state, cluster; with ``subjects_filter``, per-subject counts)."""
        with map_errors(f"read stream {stream}"), self._denied.guard(f"$JS.API.STREAM.INFO.{stream}"):
            return await self._nc.jetstream(timeout=timeout).stream_info(
                stream, subjects_filter=subjects_filter
            )

    async def consumer_info(self, stream: str, consumer: str, *, timeout: float = 5.0) -> Any:
        """The consumer's ``ConsumerInfo`` (pending, redelivered, ack floor)."""
        with map_errors(f"read consumer {stream}/{consumer}"):
            return await self._nc.jetstream(timeout=timeout).consumer_info(stream, consumer)


def nats_core(conn: Connection) -> _NatsClient:
    """The nats-py client under ``conn``, for the other modules of the NATS boundary
    (runtime/nats_admin.py, runtime/nats_consumer.py) only: everything else uses
    ``Connection``'s methods (tests/test_boundaries.py checks who imports it)."""
    return conn._nc


class Subscription:
    def __init__(self, sub: Any) -> None:
        self._sub = sub

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()


def _stored(msg: _Msg) -> StoredMessage | None:
    headers = dict(msg.headers or {})
    if headers.get("Status"):
        return None
    return StoredMessage(
        subject=headers.get("Nats-Subject", msg.subject),
        seq=int(headers.get("Nats-Sequence", "0")),
        data=msg.data,
        headers=headers,
        time=headers.get("Nats-Time-Stamp", ""),
    )
