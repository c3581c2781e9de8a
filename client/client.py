"""The async client: start executions, await results, and complete activity tokens."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Literal, TypeVar

import msgspec

from perdure.runtime import codec, tracing, verbs
from perdure.runtime.connect_options import ConnectOptions
from perdure.runtime.embedded import default_url
from perdure.runtime.errors import (
    ConfigurationError,
    ExecutionAlreadyExists,
    ExecutionNotFound,
    InvalidPayload,
    PerdureError,
    Unavailable,
    from_info,
)
from perdure.runtime.errors import ErrorInfo as _ErrorInfo
from perdure.runtime.kv_bucket import KVBucket
from perdure.runtime.limits import MAX_BYTES_REASON, check_size, max_payload_bytes
from perdure.runtime.messages import (
    TERMINAL_STATUSES,
    AnyInboxMessage,
    CompleteRequest,
    FailRequest,
    HeartbeatRequest,
    RemoteFailure,
    StartWorkflow,
)
from perdure.runtime.naming import Names, check_execution_id
from perdure.runtime.nats_client import Ack, Connection
from perdure.runtime.payload_cipher import PayloadCipher
from perdure.runtime.payload_seal import PayloadPolicy, configure, sealer_for
from perdure.runtime.tokens import decode_token
from perdure.runtime.verbs import Rep, Req, Route, Verb

from .handle import ExecutionDescription, WorkflowHandle
from .index_pages import ExecutionPage, IndexFilter, IndexPages
from .index_watch import IndexWatch

T = TypeVar("T")
OnConflict = Literal["use_existing", "fail"]
IdReuse = Literal["use_existing", "reject", "allow_after_failure", "allow"]


class HeartbeatReply(msgspec.Struct, frozen=True):
    cancel_requested: bool = False
    closed: bool = False


class Client:
    """A connection to a Perdure namespace.

    ``await Client.connect()`` without a URL finds the embedded server a local runtime
    started (or ``PERDURE_URL``, or ``nats://127.0.0.1:4222``).
    """

    def __init__(
        self,
        conn: Connection,
        names: Names,
        *,
        request_timeout: float = 10.0,
        payload_cipher: PayloadCipher | None = None,
    ) -> None:
        self.conn = conn
        self.names = names
        # Payloads over the offload threshold go to the object store, and are encrypted with
        # ``payload_cipher`` (default: PERDURE_PAYLOAD_KEYS / PERDURE_PAYLOAD_KEY_FILE).
        if payload_cipher is not None:
            configure(conn, names, dataclasses.replace(PayloadPolicy.from_env(), cipher=payload_cipher))
        self.payloads = sealer_for(conn, names)
        self.request_timeout = request_timeout
        self._partitions: int | None = None
        self.index = KVBucket(conn, names, names.executions_bucket)
        self.index_watch = IndexWatch(conn, names)
        self._pages = IndexPages(conn, names)

    @classmethod
    async def connect(
        cls,
        url: str | None = None,
        *,
        namespace: str = "perdure",
        options: ConnectOptions | None = None,
        connect_timeout: float | None = None,
        payload_cipher: PayloadCipher | None = None,
    ) -> Client:
        """Connect to ``url`` (comma-separated seeds; credentials allowed, never shown), with
        ``options``: authentication and TLS (default: the ``PERDURE_*`` variables).

        Gives up after ``connect_timeout`` seconds (default ``PERDURE_CONNECT_TIMEOUT``, 10 s)
        with ``ConnectionLost`` naming the URL and the cause (refused, unresolvable, no
        answer); a malformed URL raises ``ConfigurationError`` and refused credentials or TLS
        ``NotAuthenticated`` / ``TLSRefused`` at once.
        """
        names = Names(namespace)
        conn = await Connection.connect(
            url or default_url(), name="perdure-client", options=options, timeout=connect_timeout
        )
        return cls(conn, names, payload_cipher=payload_cipher)

    async def close(self) -> None:
        await self.index_watch.close()
        await self.conn.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- executions

    async def start(
        self,
        workflow: Any,
        input: Any = None,
        *,
        id: str | None = None,
        timeout: float | timedelta | None = None,
        on_conflict: OnConflict = "use_existing",
        id_reuse: IdReuse = "use_existing",
    ) -> WorkflowHandle:
        """Start an execution of ``workflow`` (a ``@workflow`` or its name); idempotent on ``id``.

        The input is checked against the workflow's declared input type before anything is
        sent, so a malformed input fails here with a message saying what does not decode.

        Start policies, when ``id`` names an existing execution:
        - ``on_conflict`` (it is running): ``"use_existing"`` returns its handle, ``"fail"``
          raises ``ExecutionAlreadyExists``;
        - ``id_reuse`` (it is closed): ``"use_existing"`` returns its handle (and result),
          ``"reject"`` raises, ``"allow_after_failure"`` starts a new run if it failed, was
          cancelled or terminated, ``"allow"`` always starts a new run.
        ``timeout`` bounds the whole execution (a durable timer).
        """
        execution_id = check_execution_id(id or uuid.uuid4().hex)
        name = workflow if isinstance(workflow, str) else getattr(workflow, "name", None)
        if not name:
            raise InvalidPayload(f"{workflow!r} is not a workflow (decorate it with @workflow)")
        input_codec = getattr(workflow, "input_codec", None)
        if input_codec is not None:
            raw = input_codec.check(input, what=f"input of workflow {name!r}")
        else:
            raw = msgspec.Raw(codec.encode(input))
        # Any size up to PERDURE_PAYLOAD_MAX_BYTES: a large input is offloaded (runtime/payload_seal.py).
        check_size(len(raw), max_payload_bytes(), what=f"input of workflow {name!r}", reason=MAX_BYTES_REASON)
        handle = WorkflowHandle(self, execution_id, workflow if not isinstance(workflow, str) else None)
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        message = StartWorkflow(workflow=name, input=raw, timeout=seconds)
        default_policy = on_conflict == "use_existing" and id_reuse == "use_existing"
        # The default needs no read: the start's Nats-Msg-Id and the actor both ignore a second start.
        existing = await handle._record() if id is not None and not default_policy else None
        if existing is not None:
            if existing.status not in TERMINAL_STATUSES:
                if on_conflict == "fail":
                    raise ExecutionAlreadyExists(f"execution {execution_id!r} is already {existing.status}")
                return handle
            if id_reuse == "reject":
                raise ExecutionAlreadyExists(f"execution {execution_id!r} exists ({existing.status})")
            failed = existing.status in ("FAILED", "CANCELLED", "TERMINATED")
            if id_reuse == "use_existing" or (id_reuse == "allow_after_failure" and not failed):
                return handle
            new_run = msgspec.structs.replace(message, new_run=True)
            with tracing.client_span("perdure.start", execution_id, name):
                await self.call(
                    verbs.START,
                    new_run,
                    execution_id=execution_id,
                    msg_id=f"start:{execution_id}:after:{existing.run}",
                )
            return handle
        with tracing.client_span("perdure.start", execution_id, name):
            ack = await self.call(
                verbs.START, message, execution_id=execution_id, msg_id=f"start:{execution_id}"
            )
        if ack.duplicate and on_conflict == "fail":
            # Started moments ago by someone else (the index may not show it yet).
            raise ExecutionAlreadyExists(f"execution {execution_id!r} was already started")
        handle._start_stored = True
        return handle

    def get_handle(self, execution_id: str, workflow: Any = None) -> WorkflowHandle:
        return WorkflowHandle(self, check_execution_id(execution_id), workflow)

    async def send(self, execution_id: str, message: AnyInboxMessage, *, msg_id: str | None = None) -> Ack:
        """Publish ``message`` to the execution's inbox; returns once it is stored. The
        current trace context goes with it (a ``traceparent`` header, runtime/tracing.py)."""
        data, headers = await self.payloads.encode(message, execution_id), tracing.headers()
        subject = self.names.inbox(execution_id)
        return await self._retry_unavailable(
            lambda: self.conn.publish(subject, data, msg_id=msg_id, headers=headers)
        )

    async def call(
        self, verb: Verb[Req, Rep], request: Req, *, execution_id: str = "", msg_id: str | None = None
    ) -> Rep:
        """Send ``request`` by ``verb``'s route (the table in runtime/verbs.py) and return its reply.

        ``INBOX`` verbs need ``execution_id`` (and take ``msg_id`` for deduplication) and
        return ``Accepted`` once stored; request verbs return the decoded reply, or raise the
        ``PerdureError`` it carries. Sent again while nothing answers (``Unavailable``; for a
        ``PARTITION`` verb also while no runtime serves the partition) until ``request_timeout``.
        """
        if verb.route is Route.INBOX:
            ack = await self.send(execution_id, request, msg_id=msg_id)  # type: ignore[arg-type]
            return verb.reply(seq=ack.seq, duplicate=ack.duplicate)
        if verb.route is Route.API:
            encoded = await self.payloads.encode(request, _execution_of(request, execution_id))
        else:
            encoded = codec.encode(request)
        if verb.route is Route.API:
            # The runtime forwards the body to the execution's inbox with an envelope of its own.
            check_size(len(encoded), self.conn.payload_limit, what=f"{verb.name} request")
        partitions = await self.partitions() if verb.route is Route.PARTITION else 0
        subject = verb.subject(self.names, execution_id, partitions)
        decoder = msgspec.json.Decoder(verb.reply)
        retry_on: tuple[type[Exception], ...] = (Unavailable,)
        if verb.route is Route.PARTITION:
            retry_on = (Unavailable, ConfigurationError)  # the partition is changing hands

        async def once() -> Rep:
            data = await self.conn.request(subject, encoded, timeout=self.request_timeout)
            reply = codec.decode(decoder, data, what=f"reply to {verb.name}")
            error = getattr(reply, "error", None)
            if error is not None or getattr(reply, "ok", True) is False:
                assert error is not None
                raise from_info(_ErrorInfo(code=error.code, message=error.message))
            return reply

        return await self._retry(once, retry_on)  # "unavailable": the runtime stored nothing

    async def _retry_unavailable(self, call: Callable[[], Awaitable[T]]) -> T:
        return await self._retry(call, (Unavailable,))

    async def _retry(self, call: Callable[[], Awaitable[T]], retry_on: tuple[type[Exception], ...]) -> T:
        """``call()``, again while it raises one of ``retry_on`` (nothing was stored or
        answered, so sending again is safe), for at most ``request_timeout``; then the error."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        delay = 0.05
        while True:
            try:
                return await call()
            except retry_on:
                if loop.time() + delay >= deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def signal(
        self,
        execution_id: str,
        name: str,
        payload: Any = None,
        *,
        id: str | None = None,
        workflow: Any = None,
    ) -> None:
        """Send signal ``name`` to an execution; with ``id``, sending it again has no effect.
        Raises ``ExecutionNotFound`` if there is no such execution; with ``workflow``, a
        payload that is not of the signal's declared type raises ``InvalidPayload``."""
        await self.get_handle(execution_id, workflow).signal(name, payload, id=id)

    async def cancel(self, execution_id: str, reason: str = "") -> None:
        """Cancel an execution; raises ``ExecutionNotFound`` if there is no such execution."""
        await self.get_handle(execution_id).cancel(reason)

    async def terminate(self, execution_id: str, reason: str = "") -> None:
        await self.get_handle(execution_id).terminate(reason)

    async def partitions(self) -> int:
        """The namespace's inbox partition count (read once from the stream's subject transform)."""
        if self._partitions is None:
            self._partitions = await self.conn.partition_count(self.names.inbox_stream)
        return self._partitions

    async def describe(self, execution_id: str) -> ExecutionDescription:
        return await self.get_handle(execution_id).describe()

    async def list_executions(
        self, *, status: str | None = None, workflow: str | None = None
    ) -> list[ExecutionDescription]:
        """Every execution (with this status, of this workflow), most recently changed first:
        one ordered read of the whole index. A page at a time: ``list_page``."""
        page = await self._pages.page(IndexFilter(status=status, workflow=workflow), limit=0)
        return page.executions

    async def list_page(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        prefix: str = "",
        since: float | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> ExecutionPage:
        """Up to ``limit`` executions (0: all) matching the filters (``since``: started at
        or after, epoch seconds), most recently changed first, from the page cursor ``after``
        (a page's ``next``; None: the first page). See client/index_pages.py for what paging
        shows while executions change."""
        where = IndexFilter(status=status, workflow=workflow, prefix=prefix, since=since)
        return await self._pages.page(where, limit=limit, after=after)

    # ------------------------------------------------------------- activity tokens

    async def complete_activity(self, token: str, result: Any = None) -> None:
        """Finish an async activity with ``result``. Raises ``ActivityClosed`` if it already closed."""
        raw = result if isinstance(result, msgspec.Raw) else msgspec.Raw(codec.encode(result))
        check_size(len(raw), max_payload_bytes(), what="result of the activity", reason=MAX_BYTES_REASON)
        await self.call(verbs.COMPLETE, CompleteRequest(token=token, result=raw))

    async def fail_activity(self, token: str, error: BaseException | str) -> None:
        """Fail an async activity; the workflow sees ``ActivityError`` with this type and message."""
        if isinstance(error, BaseException):
            failure = RemoteFailure(type=type(error).__qualname__, message=str(error))
        else:
            failure = RemoteFailure(type="Error", message=error)
        await self.call(verbs.FAIL, FailRequest(token=token, error=failure))

    async def heartbeat_activity(self, token: str, details: Any = None) -> HeartbeatReply:
        """Heartbeat an async activity; the reply says if the execution still wants it."""
        raw = msgspec.Raw(codec.encode(details))
        check_size(len(raw), max_payload_bytes(), what="heartbeat details", reason=MAX_BYTES_REASON)
        reply = await self.call(verbs.HEARTBEAT, HeartbeatRequest(token=token, details=raw))
        return HeartbeatReply(cancel_requested=reply.cancel_requested, closed=reply.closed)


def _execution_of(request: Any, execution_id: str) -> str:
    """The execution an API request is about (its payload objects are filed under it)."""
    if execution_id:
        return execution_id
    explicit = getattr(request, "execution_id", "")
    if explicit:
        return str(explicit)
    try:
        return decode_token(getattr(request, "token", "")).execution_id
    except PerdureError:
        return "_unknown"


__all__ = ["Client", "ExecutionNotFound", "ExecutionPage", "HeartbeatReply"]
