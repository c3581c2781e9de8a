"""ActivityActor: runs activity attempts pulled from work subjects, and reports their outcome.

One durable consumer per activity name (``work-<name>``), shared by every runtime hosting
that activity, so runtimes compete for work. At most ``concurrency`` attempts of one
activity run at once in a runtime (the consumer's credit). A running attempt keeps its
message with ``in_progress()``; if the runtime dies, the message is redelivered after
``ack_wait``. The outcome goes to the execution's inbox with a ``Nats-Msg-Id`` naming the
attempt, so publishing it twice is harmless.

The activity host's scope (``Supervisor``, given by the worker) owns the intake loop, every
attempt and the attempts' keepalives and heartbeats, so the runtime's drain waits for that
scope, not for tasks found by name.

Size: about 450 lines: intake, one attempt's run and its report; the gate, timers, heartbeats
and the running set are modules of their own (attempt_gate, attempt_timers, running_attempts).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, TypedDict

import msgspec
import structlog

from perdure.runtime import codec, tracing
from perdure.runtime.errors import (
    ErrorInfo,
    ExecutionNotFound,
    InvalidPayload,
    PayloadTooLarge,
    PerdureError,
    ScopeClosed,
    info_from_exception,
)
from perdure.runtime.limits import MAX_BYTES_REASON, check_size, max_payload_bytes
from perdure.runtime.messages import ActivityResult, ActivityTask, ApiReply
from perdure.runtime.naming import check_execution_id
from perdure.runtime.nats_admin import ensure_consumer
from perdure.runtime.nats_consumer import ConsumerGone, Delivery, PullConsumer
from perdure.runtime.payload_seal import is_sealed, sealer_for
from perdure.runtime.supervisor import Ready, Supervisor
from perdure.runtime.tokens import TokenData

from .attempt_gate import needs_asking, still_open
from .context import ActivityContext, ActivityGone, AsyncCompletion, HeartbeatStatus
from .definitions import ActivityDefinition
from .log_context import attempt_context
from .running_attempts import RunningAttempts, attempt_id

if TYPE_CHECKING:
    from .eager_keys import EagerKeys
    from .worker import WorkerServices

log = structlog.get_logger("perdure.activity")


class _AttemptKeys(TypedDict):
    """What names the attempt in each of its ``ActivityResult`` messages."""

    run: int
    seq: int
    attempt: int
    nonce: str


ACK_WAIT = 30.0


class ActivityActor:
    def __init__(
        self, services: WorkerServices, definition: ActivityDefinition[Any, Any], scope: Supervisor
    ) -> None:
        self._services = services
        self._definition = definition
        self._scope = scope  # the activity host's: attempts, keepalives, heartbeats
        self._consumer: PullConsumer | None = None

    async def run(self, ready: Ready = lambda: None) -> None:
        """Pull work items and start an attempt for each; ``ready`` once the consumer pulls."""
        services, name = self._services, self._definition.name
        await ensure_consumer(
            services.conn,
            stream=services.names.work_stream,
            name=services.names.work_consumer(name),
            filter_subject=services.names.work(name),
            ack_wait=ACK_WAIT,
            max_ack_pending=max(1000, services.settings.activity_concurrency * 4),
        )
        consumer = PullConsumer(
            services.conn,
            services.names.work_stream,
            services.names.work_consumer(name),
            credit=services.settings.activity_concurrency,
        )
        self._consumer = consumer
        await consumer.start()
        ready()
        try:
            while True:
                batch = await consumer.next_batch()
                for i, delivery in enumerate(batch):
                    try:
                        self._scope.spawn(self._attempt(delivery), name=f"activity:{name}")
                    except ScopeClosed:  # the runtime is stopping: these were never started
                        log.info("activity.stopping", activity=name, handed_back=len(batch) - i)
                        for unstarted in batch[i:]:
                            await unstarted.nak()
                        return
        except ConsumerGone:
            log.warning("activity.consumer_gone", activity=name)
        finally:
            await consumer.stop()
            await _hand_back(consumer, name)

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            await self._run_attempt(delivery)
        finally:
            if self._consumer is not None:
                self._consumer.release(1)

    async def _run_attempt(self, delivery: Delivery) -> None:
        try:
            task = codec.decode(codec.activity_task, delivery.data, what=f"work item on {delivery.subject}")
            # Its outcome goes to <ns>.inbox.<execution id>: an id that is not one subject
            # token ("a.b", "x y") could never be reported, so the attempt would run again
            # at every redelivery. Refuse it before running anything.
            check_execution_id(task.execution_id)
        except InvalidPayload as exc:
            # A poison work item: terminated, never redelivered. (The dead-letter stream of
            # actors/dead_letters.py belongs here: park the item with this reason first.)
            log.error("activity.bad_work_item", subject=delivery.subject, error=str(exc))
            self._services.metrics.dead_lettered("bad_work_item")
            await delivery.term()
            return
        if delivery.num_delivered > 1 and await self._retried_elsewhere(task):
            # Redelivered after a worker died mid-attempt: the workflow's timeout/heartbeat
            # timers own the retry (with the right attempt number), so this copy is not run.
            log.info("activity.redelivery_skipped", execution_id=task.execution_id, seq=task.seq)
            await delivery.ack()
            return
        running = self._services.effects.running
        attempt = attempt_id(task.execution_id, task.run, task.seq, task.attempt)
        with attempt_context(task):
            keepalive = self._scope.spawn(
                _keep_in_progress(delivery), name=f"keepalive:{task.execution_id}:{task.seq}"
            )
            claimed = False
            try:
                claimed = await _claim(running, attempt)
            finally:
                if not claimed:
                    keepalive.cancel()
            if not claimed:
                log.info("activity.duplicate_skipped")
                await delivery.ack()
                return
            concluded = False
            try:
                try:
                    outcome = await self._execute(
                        task,
                        eager=False,
                        headers=delivery.headers,
                        ask=needs_asking(task, delivery.num_delivered, delivery.headers),
                    )
                finally:
                    keepalive.cancel()
                if outcome is not None:
                    await self._services.conn.publish(
                        self._services.names.inbox(task.execution_id),
                        await sealer_for(self._services.conn, self._services.names).encode(
                            outcome, task.execution_id
                        ),
                        msg_id=f"{task.execution_id}:{task.run}:a:{task.seq}:{task.attempt}:result",
                    )
                concluded = True
            finally:
                running.release(attempt, concluded)  # once its outcome is sent, not before
            await delivery.ack()

    async def run_local(self, task: ActivityTask, keys: EagerKeys) -> ActivityResult | None:
        """An eager attempt (``local_activities``, whose task has its ids bound): run it here,
        its record written only if it needs one (``keys``); the caller routes the outcome."""
        return await self._execute(task, eager=True, keys=keys)

    async def _retried_elsewhere(self, task: ActivityTask) -> bool:
        """A redelivered attempt is run again only if it never started: a started one has
        timers (its liveness key, timeout or heartbeat timer) that retry it."""
        return await self._services.attempts.was_started(task)

    async def _execute(
        self,
        task: ActivityTask,
        *,
        eager: bool,
        headers: dict[str, str] | None = None,
        ask: bool = False,
        keys: EagerKeys | None = None,
    ) -> ActivityResult | None:
        running = await self._services.attempts.start(task, eager=eager)
        if running is None:
            return None  # its schedule-to-start timer fired (or it closed) while it was queued
        # Asked after its timers are armed, the last thing before its code runs, so the
        # window in which a close can still slip in is one history read (actors/attempt_gate.py).
        if ask and not await still_open(self._services.conn, self._services.names, task):
            log.info("activity.closed_before_start")
            await running.end(reported=False)  # its liveness key goes: nothing will report
            return None
        metrics, began = self._services.metrics, time.perf_counter()
        try:
            with tracing.attempt_span(task.name, task.execution_id, task.attempt, headers):
                outcome = await self._run_function(task, keys)
                if outcome is not None and outcome.error is not None:
                    tracing.note_failure(outcome.error.message)
        except BaseException:
            metrics.attempt_ended(task.name, "cancelled", time.perf_counter() - began)
            running.abandon()  # cancelled (the runtime stops): its liveness key expires, it is retried
            raise
        metrics.attempt_ended(task.name, outcome, time.perf_counter() - began)
        await running.end(reported=outcome is not None)
        return outcome

    async def _run_function(self, task: ActivityTask, keys: EagerKeys | None = None) -> ActivityResult | None:
        definition = self._definition
        base: _AttemptKeys  # typed, so that ``**base`` below type-checks field by field
        base = {"run": task.run, "seq": task.seq, "attempt": task.attempt, "nonce": task.nonce}
        heartbeats = _Heartbeater(self._services, task, self._scope, keys)
        if task.options.heartbeat is not None:
            # A first heartbeat as the attempt starts: the silence allowed is counted from
            # here, not from when it was queued; and an attempt that was closed while it
            # waited (timed out, cancelled, completed by its token) is not run at all.
            status = await heartbeats.beat(None)
            if status.closed or status.cancel_requested:
                log.info("activity.closed_before_start")
                return None
        deadline: asyncio.Timeout | None = None
        try:
            args = self._arguments(await self._opened(task), heartbeats, keys)
            if definition.is_async:
                async with asyncio.timeout(task.options.timeout) as deadline:
                    value = await definition.fn(*args)
            else:
                value = await asyncio.to_thread(definition.fn, *args)
        except ActivityGone as exc:
            await heartbeats.stop()
            log.info("activity.abandoned", reason=str(exc))
            return None
        except Exception as exc:
            # Details still held back by the throttle go out first: they are the checkpoint
            # the next attempt resumes from.
            await heartbeats.flush()
            if isinstance(exc, TimeoutError) and deadline is not None and deadline.expired():
                return None  # the attempt's own deadline: the workflow's timeout timer reports it
            # Anything else, a TimeoutError the code raised itself included, fails the attempt.
            log.info("activity.failed", error=repr(exc)[:1000])
            return ActivityResult(ok=False, error=self._fitting(info_from_exception(exc)), **base)
        except BaseException:
            await heartbeats.stop()
            raise
        if isinstance(value, AsyncCompletion):
            await heartbeats.flush()  # whoever holds the token carries on from these details
            log.debug("activity.async_completion")
            return None
        await heartbeats.stop()
        try:
            raw = definition.result_codec.encode(value, what=f"result of activity {definition.name!r}")
            # Any size up to PERDURE_PAYLOAD_MAX_BYTES: a large result is offloaded when sent.
            check_size(
                len(raw),
                max_payload_bytes(),
                what=f"result of activity {definition.name!r}",
                reason=MAX_BYTES_REASON,
            )
        except PerdureError as exc:
            return ActivityResult(
                ok=False, error=msgspec.structs.replace(exc.to_info(), retryable=False), **base
            )
        return ActivityResult(ok=True, result=raw, **base)

    async def _opened(self, task: ActivityTask) -> ActivityTask:
        """The task with its input and checkpoint fetched/decrypted if sealed (runtime/payload_seal.py)."""
        if is_sealed(task.input) or is_sealed(task.checkpoint):
            return await sealer_for(self._services.conn, self._services.names).open(task)
        return task

    def _fitting(self, error: ErrorInfo) -> ErrorInfo:
        """The error as recorded, or, when it does not fit in one message (a huge message or
        details), a ``PayloadTooLarge`` naming it: the outcome must always be reportable."""
        size = len(codec.encode(error))
        limit = self._services.conn.payload_limit
        if size <= limit:
            return error
        exc = PayloadTooLarge(
            f"the error raised by activity {self._definition.name!r} is {size} bytes; the limit "
            f"is {limit} bytes ({error.type}: {error.message[:1000]})",
            size=size,
            limit=limit,
        )
        return exc.to_info()

    def _arguments(
        self, task: ActivityTask, heartbeats: _Heartbeater, keys: EagerKeys | None
    ) -> tuple[Any, ...]:
        definition = self._definition
        args: list[Any] = []
        if definition.takes_input:
            args.append(
                definition.input_codec.decode(task.input, what=f"input of activity {definition.name!r}")
            )
        if definition.takes_ctx:
            args.append(self._context(task, heartbeats, keys))
        return tuple(args)

    def _context(
        self, task: ActivityTask, heartbeats: _Heartbeater, keys: EagerKeys | None
    ) -> ActivityContext:
        checkpoint = msgspec.json.decode(task.checkpoint)
        return ActivityContext(
            execution_id=task.execution_id,
            workflow=task.workflow,
            activity=task.name,
            activity_id=task.seq,
            attempt=task.attempt,
            _token=task.token,
            checkpoint=checkpoint,
            _heartbeat=heartbeats.beat,
            _loop=asyncio.get_running_loop(),  # a sync activity's heartbeat runs there (item 14)
            _token_read=keys.token_read if keys is not None else None,
        )


class _Heartbeater:
    """Throttles heartbeats: at most one to the server per 0.8 x heartbeat timeout.

    The latest details are always kept: a heartbeat that is not sent at once is sent at
    the end of the interval (trailing edge), or by ``flush()`` when the attempt ends
    without a result, so the last checkpoint is never lost. Heartbeats are best effort:
    one that cannot reach NATS is logged and retried with the next, never raised into the
    activity (the heartbeat timeout is what notices a worker that really went away).
    """

    def __init__(
        self, services: WorkerServices, task: ActivityTask, scope: Supervisor, keys: EagerKeys | None = None
    ) -> None:
        self._services = services
        self._keys = keys  # an eager attempt's: its record is stored before its first heartbeat
        self._scope = scope
        self._activity = task.name
        self._token = TokenData(task.execution_id, task.run, task.seq, task.attempt, task.nonce)
        heartbeat = task.options.heartbeat
        self._interval = 0.8 * heartbeat if heartbeat else 1.0
        self._last_sent = -self._interval
        self._pending: msgspec.Raw | None = None
        self._has_pending = False
        self._trailing: asyncio.Task[None] | None = None
        self._status = HeartbeatStatus()

    async def beat(self, details: Any) -> HeartbeatStatus:
        """Raises ``PayloadTooLarge`` into the activity at once if ``details`` cannot be
        stored (the checkpoint a retry resumes from would otherwise be lost silently)."""
        encoded = msgspec.Raw(codec.encode(details)) if details is not None else None
        if encoded is not None:
            check_size(
                len(encoded),
                max_payload_bytes(),
                reason=MAX_BYTES_REASON,
                what=f"heartbeat details of activity {self._activity!r}",
            )
        self._pending, self._has_pending = encoded, True
        wait = self._last_sent + self._interval - time.monotonic()
        if wait <= 0:
            await self._send_logged()
        elif self._trailing is None or self._trailing.done():
            self._trailing = self._scope.spawn(
                self._send_later(wait), name=f"heartbeat:{self._token.execution_id}:{self._token.seq}"
            )
        return self._status

    async def flush(self, timeout: float = 5.0) -> None:
        """Send the details still held back (the attempt ends without a result)."""
        await self.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._send_logged()

    async def stop(self) -> None:
        trailing, self._trailing = self._trailing, None
        if trailing is not None and not trailing.done():
            trailing.cancel()
            await asyncio.wait({trailing})

    async def _send_later(self, wait: float) -> None:
        await asyncio.sleep(wait)
        await self._send_logged()

    async def _send_logged(self) -> None:
        try:
            await self._send()
        except PerdureError as exc:
            log.warning("activity.heartbeat_failed", error=str(exc))

    async def _send(self) -> None:
        if not self._has_pending:
            return
        pending, self._has_pending = self._pending, False
        self._last_sent = time.monotonic()
        self._services.metrics.heartbeats.inc()
        if self._keys is not None and not await self._keys.record_stored():
            self._status = HeartbeatStatus(closed=True)  # its activity closed before it needed a record
            return
        try:
            reply: ApiReply = await self._services.heartbeats.beat(self._token, pending)
        except ExecutionNotFound:
            self._status = HeartbeatStatus(closed=True)  # the execution is gone: nobody wants it
            return
        except BaseException:
            if not self._has_pending:  # not sent, and nothing newer came: keep it for the next try
                self._pending, self._has_pending = pending, True
            raise
        self._status = HeartbeatStatus(cancel_requested=reply.cancel_requested, closed=reply.closed)


async def _claim(running: RunningAttempts, attempt: str) -> bool:
    """Run ``attempt`` here, unless the same attempt already runs in this runtime (eagerly,
    its step redone): that run reports it, and False says this copy is not needed, unless
    that run gives up without reporting; then this copy runs."""
    while not running.claim(attempt):
        if await running.wait(attempt):
            return False
    return True


async def _keep_in_progress(delivery: Delivery) -> None:
    while True:
        await asyncio.sleep(ACK_WAIT / 3)
        await delivery.in_progress()


async def _hand_back(consumer: PullConsumer, name: str) -> None:
    """The runtime stops: work items pulled but not started go back at once (nak, no delay)
    for another runtime to take, rather than after the ack wait. ``stop()`` queued an end
    marker behind them, which ``next_batch`` raises."""
    handed_back = 0
    with contextlib.suppress(asyncio.CancelledError, ConsumerGone):
        while True:
            for delivery in await consumer.next_batch():
                await delivery.nak(delay=0.0)
                handed_back += 1
    if handed_back:
        log.info("activity.handed_back", activity=name, handed_back=handed_back)
