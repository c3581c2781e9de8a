"""Token completion and heartbeats, for activities finished outside their worker.

Served on request/reply subjects by every runtime (one queue group), with JSON bodies so
any language can use them with a plain NATS request:

    <ns>.api.complete   {"token": "...", "result": ...}
    <ns>.api.fail       {"token": "...", "error": {"type": "...", "message": "..."}}
    <ns>.api.heartbeat  {"token": "...", "details": ...}
    <ns>.api.signal     {"execution_id": "...", "name": "...", "payload": ..., "id": "..."}

Completions go through the execution's inbox; the reply is sent by the execution actor once
the outcome is in history: ``{"ok": true}``, or ``{"ok": false, "error": {...}}`` (code
``activity.closed`` when the activity had already completed, failed or timed out).
Heartbeats never touch history: they re-put the attempt's record, resetting its TTL.
These are the ``API`` rows of the verb table (runtime/verbs.py), served by ``verb_server``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, NoReturn

import msgspec
import structlog

from perdure.runtime import codec, verbs
from perdure.runtime.errors import (
    ErrorInfo,
    ExecutionNotFound,
    HistoryConflict,
    InvalidPayload,
    InvalidToken,
)
from perdure.runtime.events import (
    ActivityConcluded,
    ActivityScheduled,
    ClosingDecision,
    WorkflowStarted,
)
from perdure.runtime.existence import require_execution
from perdure.runtime.kv_bucket import KVBucket, Put
from perdure.runtime.messages import (
    REPLY_HEADER,
    ActivityProgress,
    ActivityRecord,
    ActivityResult,
    ApiReply,
    CompleteRequest,
    FailRequest,
    HeartbeatRequest,
    HeartbeatStatus,
    SignalRequest,
    SignalWorkflow,
)
from perdure.runtime.naming import Names, check_execution_id, partition_of
from perdure.runtime.nats_client import Connection, StoredMessage, Subscription
from perdure.runtime.payload_seal import is_sealed, sealer_for
from perdure.runtime.rawjson import NULL, is_null
from perdure.runtime.tokens import TokenData, decode_token
from perdure.runtime.verbs import Verb

from .effects import CHECKPOINT_TTL, record_timer
from .registry import Registry
from .timers import TimerKey
from .verb_server import Handler, serve_all

log = structlog.get_logger("perdure.completion")

# How long a heartbeat keeps re-reading an attempt's record that other writers keep changing.
CONTENTION_DEADLINE = 5.0


class HeartbeatService:
    """Re-puts an attempt's record (resetting its heartbeat TTL) and says if it is still wanted."""

    def __init__(self, conn: Connection, names: Names, partitions: int) -> None:
        self._conn = conn
        self._names = names
        self.partitions = partitions
        self._timers = KVBucket(conn, names, names.timers_bucket)
        self.sealer = sealer_for(conn, names)  # checkpoints are sealed before they are stored

    def _record_key(self, token: TokenData) -> TimerKey:
        """The key of the attempt's record (its heartbeat timer)."""
        partition = partition_of(token.execution_id, self.partitions)
        return TimerKey(partition, token.execution_id, token.run, record_timer(token.seq, token.attempt))

    async def beat(self, token: TokenData, details: msgspec.Raw | None) -> ApiReply:
        """Reset the attempt's heartbeat TTL (a compare-and-set re-put of its record), store
        ``details`` as its checkpoint, and say whether it is still wanted.

        Heartbeats of one attempt can race (several senders, retries): when the re-put loses
        to a newer write of an open record that carries the heartbeat TTL, that write reset
        the TTL after this heartbeat arrived, which is all this one had to do. Otherwise it
        reads again, with a short back-off, until ``CONTENTION_DEADLINE``; then it answers a
        retryable ``HistoryConflict``, never "closed" for an attempt that is open.
        """
        key = self._record_key(token)
        conflicted = 0

        def started(stored: StoredMessage | None, conflicts: int) -> Put | None:
            nonlocal conflicted
            conflicted = conflicts
            if stored is None or not stored.is_value:
                return None
            record = self._decode_record(stored, token)
            if record.closed or (conflicts and self._covers(stored, record, details)):
                return None  # closed, or a newer write already reset the TTL
            updated = record if record.started else msgspec.structs.replace(record, started=True)
            return Put(codec.encode(updated), ttl=record.heartbeat)

        try:
            outcome = await self._timers.update(
                key.key(), started, attempts=None, deadline=CONTENTION_DEADLINE
            )
        except HistoryConflict:
            raise HistoryConflict(
                f"heartbeat of activity {token.seq} of {token.execution_id}: its record "
                f"changed {conflicted + 1} times while this heartbeat tried to write it; "
                "send it again"
            ) from None
        stored = outcome.stored
        if stored is None or not stored.is_value:
            return await self._no_record(token, expired=stored is not None)
        record = self._decode_record(stored, token)
        if record.closed:
            return ApiReply(ok=True, closed=True, cancel_requested=record.cancel_requested)
        revision = outcome.ack.seq if outcome.ack is not None else stored.seq
        if details is not None and not is_null(details):
            details = await self.sealer.seal_raw(details, token.execution_id)
            await self._timers.put(key.checkpoint().key(), bytes(details), ttl=CHECKPOINT_TTL)
            if record.observed:
                await self._report_progress(token, details, revision)
        return ApiReply(ok=True, cancel_requested=record.cancel_requested)

    @staticmethod
    def _decode_record(stored: StoredMessage, token: TokenData) -> ActivityRecord:
        record = codec.decode(codec.activity_record, stored.data, what="activity record")
        if record.nonce != token.nonce:
            raise InvalidToken(
                f"token does not match activity {token.seq} of {token.execution_id} (wrong nonce)"
            )
        return record

    @staticmethod
    def _covers(stored: StoredMessage, record: ActivityRecord, details: msgspec.Raw | None) -> bool:
        """Whether a write newer than the one this heartbeat lost to does its job: the attempt
        is flagged started and its TTL was reset (or it has none). Progress a workflow
        watches is numbered by record revision, so details for it still need a write of
        their own."""
        ttl_reset = record.heartbeat is None or "Nats-TTL" in stored.headers
        reports_progress = record.observed and details is not None and not is_null(details)
        return record.started and ttl_reset and not reports_progress

    async def mark_started(self, token: TokenData) -> None:
        """Flag the attempt's record ``started`` (an eager attempt handed its token over with
        ``make_async()``: a runtime recovering lost eager attempts must leave it alone)."""

        def started(stored: StoredMessage | None, conflicts: int) -> Put | None:
            if stored is None or not stored.is_value:
                return None  # closed already (its keys are purged)
            record = codec.decode(codec.activity_record, stored.data, what="activity record")
            if record.started or record.closed:
                return None
            return Put(codec.encode(msgspec.structs.replace(record, started=True)))

        with contextlib.suppress(HistoryConflict):  # heartbeats and the actor kept writing it
            await self._timers.update(self._record_key(token).key(), started, attempts=5)

    async def _report_progress(self, token: TokenData, details: msgspec.Raw, revision: int) -> None:
        """The workflow watches this activity: its checkpoint goes to the inbox (and history)."""
        message = ActivityProgress(
            run=token.run, seq=token.seq, attempt=token.attempt, nonce=token.nonce, details=details
        )
        await self._conn.publish(
            self._names.inbox(token.execution_id),
            codec.encode(message),
            msg_id=f"{token.execution_id}:{token.run}:p:{token.seq}:{token.attempt}:{revision}",
        )

    async def _no_record(self, token: TokenData, *, expired: bool) -> ApiReply:
        """No open record. History tells why: the token names no activity (``InvalidToken``);
        the activity closed (its keys are purged then), a later attempt replaced this one, or
        its record expired (a heartbeat timeout): closed, and cancelled if the workflow
        cancelled it; or the record is not stored yet (the work item can reach a worker before
        the record reaches its stream): still open. Only late heartbeats take this path."""
        names = self._names
        stored = await self._conn.read_subject(names.history_stream, names.history(token.execution_id))
        if not stored:
            raise_not_found(token)
        scheduled = closed = cancelled = False
        latest_attempt = 0
        run = 0
        for message in stored:
            step = codec.decode(codec.history_step, message.data, what=f"history of {token.execution_id}")
            if step.inputs and isinstance(step.inputs[0], WorkflowStarted):
                run = step.inputs[0].run  # runs after a continue-as-new share the subject
            if run != token.run:
                continue
            for decision in step.decisions:
                if isinstance(decision, ActivityScheduled) and decision.seq == token.seq:
                    scheduled = scheduled or decision.nonce == token.nonce
                    latest_attempt = max(latest_attempt, decision.attempt)
                elif isinstance(decision, ActivityConcluded) and decision.seq == token.seq:
                    closed = True
                    cancelled = decision.outcome == "cancelled"
                elif isinstance(decision, ClosingDecision):  # the run ended
                    closed = True
        if not scheduled:
            raise InvalidToken(
                f"token does not match activity {token.seq} of {token.execution_id} "
                "(no such activity, or wrong nonce)"
            )
        superseded = latest_attempt > token.attempt
        return ApiReply(ok=True, closed=closed or expired or superseded, cancel_requested=cancelled)


def raise_not_found(token: TokenData) -> NoReturn:
    raise ExecutionNotFound(f"no execution {token.execution_id!r} (token names an unknown execution)")


class CompletionService:
    """Serves the complete/fail/heartbeat request subjects."""

    def __init__(
        self,
        conn: Connection,
        names: Names,
        heartbeats: HeartbeatService,
        registry: Registry | None = None,
        holds: Callable[[str], bool] = lambda execution_id: False,
    ) -> None:
        self._conn = conn
        self._names = names
        self._heartbeats = heartbeats
        self._registry = registry  # the workflows hosted here: their declared signal types
        # Whether this runtime holds the execution's instance in memory now: then it exists,
        # and an outcome is forwarded without reading its index entry first (a round trip on
        # the way of every async completion).
        self._holds = holds
        self._subs: list[Subscription] = []

    def handlers(self) -> dict[Verb[Any, Any], Handler]:
        """The ``API`` rows of the verb table (runtime/verbs.py) and what serves each."""
        return {
            verbs.COMPLETE: self._complete,
            verbs.FAIL: self._fail,
            verbs.HEARTBEAT: self._heartbeat,
            verbs.SIGNAL_API: self._signal,
        }

    async def start(self) -> None:
        self._subs = await serve_all(self._conn, self._names, self.handlers())

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.stop()
        self._subs.clear()

    async def _complete(self, request: CompleteRequest, reply: str) -> None:
        token = decode_token(request.token)
        await self._forward(token, reply, ok=True, result=request.result)

    async def _fail(self, request: FailRequest, reply: str) -> None:
        token = decode_token(request.token)
        error = ErrorInfo(
            code="activity.failed",
            type=request.error.type,
            message=request.error.message,
            retryable=request.error.retryable,
            traceback=request.error.traceback,
        )
        await self._forward(token, reply, ok=False, error=error)

    async def _heartbeat(self, request: HeartbeatRequest, reply: str) -> HeartbeatStatus:
        token = decode_token(request.token)
        answer = await self._heartbeats.beat(token, request.details)
        return HeartbeatStatus(cancel_requested=answer.cancel_requested, closed=answer.closed)

    async def _signal(self, request: SignalRequest, reply: str) -> ApiReply:
        """Signal from any language; the reply comes once the signal is durably in the inbox."""
        check_execution_id(request.execution_id)
        index = await self._require_execution(request.execution_id)
        self._check_signal_type(index, request.name, request.payload)
        message = SignalWorkflow(name=request.name, payload=request.payload, id=request.id)
        await self._conn.publish(
            self._names.inbox(request.execution_id),
            await self._heartbeats.sealer.encode(message, request.execution_id),
            msg_id=f"signal:{request.execution_id}:{request.id}" if request.id else None,
        )
        return ApiReply(ok=True)

    def _check_signal_type(self, index: StoredMessage | None, name: str, payload: msgspec.Raw) -> None:
        """Where the signal's type is known (this runtime hosts the workflow, which declares
        it), a payload of another type is refused now rather than skipped by the workflow."""
        if index is None or not index.is_value or self._registry is None or is_sealed(payload):
            return  # (a sealed payload is checked by the workflow, which refuses a wrong type)
        record = codec.decode(codec.execution_record, index.data, what="index entry")
        definition = self._registry.workflow(record.workflow)
        signal_codec = definition.signal_codecs.get(name) if definition is not None else None
        if signal_codec is not None:
            signal_codec.decode(payload, what=f"signal {name!r}")

    async def _require_execution(self, execution_id: str) -> StoredMessage | None:
        """The execution exists (its index entry, a start waiting in its inbox, or its
        history: an eager activity can hand its token over, and be completed, before the
        index entry is stored)."""
        return await require_execution(self._conn, self._names, execution_id, self._heartbeats.partitions)

    async def _forward(
        self,
        token: TokenData,
        reply: str,
        *,
        ok: bool,
        result: msgspec.Raw = NULL,
        error: ErrorInfo | None = None,
    ) -> None:
        """Put the outcome in the execution's inbox; its actor replies once it is in history."""
        if not self._holds(token.execution_id):
            await self._require_execution(token.execution_id)
        message = ActivityResult(
            run=token.run,
            seq=token.seq,
            attempt=token.attempt,
            nonce=token.nonce,
            ok=ok,
            result=result,
            error=error,
        )
        await self._conn.publish(
            self._names.inbox(token.execution_id),
            await self._heartbeats.sealer.encode(message, token.execution_id),
            headers={REPLY_HEADER: reply} if reply else None,
        )


__all__ = ["CompletionService", "HeartbeatService", "InvalidPayload"]
