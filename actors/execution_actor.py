"""ExecutionActor: one execution, one step at a time.

A step takes every inbox message waiting for the execution, turns the valid ones into
history inputs, runs the workflow code on them, appends one ``HistoryStep`` with
``Nats-Expected-Last-Subject-Sequence`` (a conflict means another owner wrote: reload and
decide again), performs the step's effects, and only then acks the inbox messages. A
crash anywhere before the ack replays the message; the step's ``absorbed`` list then
recognises it, and its effects are performed again (they are idempotent).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from perdure.runtime import codec
from perdure.runtime.errors import (
    ConnectionLost,
    HistoryConflict,
    InvalidPayload,
    NonDeterminismError,
    PerdureError,
    StepBudgetExceeded,
)
from perdure.runtime.events import (
    ActivityCompleted,
    ActivityFailed,
    ActivityProgressed,
    CancelRequested,
    ChildClosed,
    HistoryStep,
    InputEvent,
    SignalReceived,
    TerminateRequested,
    TimerFired,
    WorkflowContinuedAsNew,
    WorkflowStarted,
)
from perdure.runtime.messages import (
    REPLY_HEADER,
    ActivityProgress,
    ActivityResult,
    AnyInboxMessage,
    ApiError,
    ApiReply,
    CancelWorkflow,
    ChildResult,
    QueryReply,
    SignalWorkflow,
    StartWorkflow,
    TerminateWorkflow,
    TimerExpired,
)
from perdure.runtime.nats_admin import purge_subject
from perdure.runtime.nats_consumer import Delivery

from .effect_runner import ExecutionRef, Sent
from .effects import Effect, StartAttempt, record_timer
from .instance import WorkflowInstance, evict
from .local_activities import HeldAck, LocalResult, attempt_id, spawner
from .timers import TimerKey

if TYPE_CHECKING:
    from .worker import WorkerServices

log = structlog.get_logger("perdure.execution")

_KEPT_STEP_EFFECTS = 64
_KEPT_ABSORBED = 4096
_MAX_CONFLICT_RETRIES = 5
DORMANT_HORIZON = 30.0  # seconds: an execution with nothing of its own due sooner is not cached


class UnknownWorkflow(PerdureError):
    code = "workflow.unknown"


Incoming = Delivery | LocalResult  # from the inbox, or an eager attempt's outcome from this process


@dataclass(slots=True)
class _Incoming:
    delivery: Incoming
    message: AnyInboxMessage
    event: InputEvent | None = None
    refusal: ApiError | None = None


class ExecutionActor:
    def __init__(
        self,
        services: WorkerServices,
        execution_id: str,
        partition: int,
        release: Callable[[int], None],
        on_dormant: Callable[[ExecutionActor], None] = lambda actor: None,
    ) -> None:
        self.execution_id = execution_id
        self.partition = partition
        self._services = services
        self._release = release
        self._on_dormant = on_dormant
        self.mailbox: list[Incoming] = []
        self.busy = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._lock = asyncio.Lock()  # a step and a query never interleave
        self.instance: WorkflowInstance | None = None
        self.ref: ExecutionRef | None = None
        self._loaded = False
        self._last_seq = 0
        self._last_time = 0.0
        self._absorbed: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._step_effects: collections.OrderedDict[int, list[Effect]] = collections.OrderedDict()
        self.blocked: str | None = None
        self._history_may_exist = False  # set after a conflict: never assume a fresh execution again
        self._bound_log: Any = None
        self._hold: HeldAck | None = None  # the current step's inbox acks, if it started eager attempts
        self._settling: asyncio.Task[None] | None = None  # the last step's effects and acks, under way

    @property
    def _log(self) -> Any:
        """Bound on first use: most actors never log, and binding costs on the hot path."""
        if self._bound_log is None:
            self._bound_log = log.bind(execution_id=self.execution_id)
        return self._bound_log

    @property
    def idle(self) -> bool:
        settling = self._settling is not None and not self._settling.done()
        return not self.busy and not self.mailbox and not settling

    async def wait_idle(self) -> None:
        await self._idle.wait()
        if self._settling is not None:
            await asyncio.wait([self._settling])

    def deliver(self, delivery: Incoming) -> None:
        self.mailbox.append(delivery)
        if not self.busy:
            self.busy = True
            self._idle.clear()
            self._services.supervisor.spawn(self._drain(), name=f"execution:{self.execution_id}")

    async def _drain(self) -> None:
        try:
            while self.mailbox:
                batch, self.mailbox = self.mailbox, []
                async with self._lock:
                    await self._handle(batch)
        finally:
            self.busy = False
            self._idle.set()
        self._maybe_dormant()

    def _maybe_dormant(self) -> None:
        """An idle execution with nothing due for a while leaves the cache (its history
        replays when a timer or a message wakes it): a workflow waiting a week holds no
        memory here but its timer."""
        instance = self.instance
        if instance is None or not self.idle:
            return
        if instance.dormant(time.time(), DORMANT_HORIZON):
            self._on_dormant(self)

    async def _handle(self, batch: list[Incoming]) -> None:
        for _ in range(_MAX_CONFLICT_RETRIES):
            try:
                await self._step(batch)
                return
            except HistoryConflict as exc:
                self._log.info("execution.conflict", error=str(exc))
                self._forget()
                self._history_may_exist = True
            except StepBudgetExceeded as exc:  # blocking workflow code: BLOCKED, messages kept
                self._log.error("execution.step_over_budget", error=str(exc))
                await self._block(exc)
                await self._nak(batch, delay=30.0, hold=self._take_hold())
                return
            except UnknownWorkflow as exc:
                self._log.error("execution.unknown_workflow", error=str(exc))
                self._forget()
                await self._nak(batch, delay=5.0, hold=self._take_hold())
                return
            except (ConnectionLost, PerdureError) as exc:
                self._log.warning("execution.step_failed", error=str(exc))
                self._forget()
                await self._nak(batch, delay=1.0, hold=self._take_hold())
                return
            except Exception:
                self._log.exception("execution.step_crashed")
                self._forget()
                await self._nak(batch, delay=2.0, hold=self._take_hold())
                return
        await self._nak(batch, delay=0.5, hold=self._take_hold())

    def _take_hold(self) -> HeldAck | None:
        hold, self._hold = self._hold, None
        return hold

    async def _nak(self, batch: list[Incoming], *, delay: float, hold: HeldAck | None) -> None:
        if hold is not None:
            hold.abandon()  # its deliveries are nak'd here; its attempts' outcomes settle nothing
        for delivery in batch:
            await delivery.nak(delay=delay)
        self._release(_from_inbox(batch))

    def _settle_later(self, batch: list[Incoming], sent: Sent) -> None:
        """The step is in history and its writes are sent: the actor goes on to the next
        step while a task waits for the acks (after the previous step's), then acks."""
        hold, after = self._take_hold(), self._settling
        try:
            self._settling = self._services.supervisor.spawn(
                self._settle(batch, hold, sent, after), name="settle"
            )
        except RuntimeError:  # stopping: unacked, the messages go to the partition's next owner
            self._settling = None

    async def _settle(
        self, batch: list[Incoming], hold: HeldAck | None, sent: Sent, after: asyncio.Task[None] | None
    ) -> None:
        if after is not None and not after.done():
            await asyncio.wait([after])
        try:
            await sent.finish()
        except PerdureError as exc:
            # History has the step: its messages come back and their effects are redone.
            self._log.warning("execution.effects_failed", error=str(exc))
            await self._nak(batch, delay=1.0, hold=hold)
            return
        await self._done(batch, hold)
        if self._settling is asyncio.current_task():
            self._settling = None
            self._maybe_dormant()

    async def _done(self, batch: list[Incoming], hold: HeldAck | None) -> None:
        """The step is durable: ack its inbox messages; those of a step that started eager
        attempts wait for their outcomes to be in history too (``HeldAck``)."""
        if hold is not None and hold.attempts:
            # Outcomes in this batch pass their shares on to ``hold`` (its parents): the
            # messages that scheduled them are acked with this step's own, at the chain's end.
            for delivery in batch:
                if isinstance(delivery, LocalResult):
                    delivery.absorbed()
            hold.step_done()
        else:
            for delivery in batch:
                await delivery.ack()
        self._release(_from_inbox(batch))

    async def _block(self, exc: PerdureError) -> None:
        """Stop applying messages (they are kept) and say why in the index: BLOCKED."""
        ref = self.ref
        self._forget()
        self._loaded, self.blocked = True, str(exc)
        if ref is not None:
            await self._services.effects.mark_blocked(ref, str(exc), code=exc.code, kind=type(exc).__name__)

    def _forget(self) -> None:
        """Drop the in-memory state; the next step replays history."""
        evict(self.instance)
        self.instance = None
        self.ref = None
        self._loaded = False
        self._last_seq = 0
        self._absorbed.clear()
        self._step_effects.clear()
        self.blocked = None

    async def query(self, name: str, args: msgspec.Raw) -> QueryReply:
        """Answer a query from live state (replaying history first if needed); writes nothing."""
        async with self._lock:
            if not self._loaded:
                await self._load()
            instance = self.instance
            if instance is None:
                return QueryReply(
                    ok=False,
                    error=ApiError(code="execution.not_found", message=f"no execution {self.execution_id!r}"),
                )
            handler = instance.queries.get(name)
            if handler is None:
                known = ", ".join(sorted(instance.queries)) or "none"
                return QueryReply(
                    ok=False,
                    error=ApiError(code="query.unknown", message=f"no query {name!r} (known: {known})"),
                )
            try:
                decoded = msgspec.json.decode(args)
                value = handler(
                    *(decoded if isinstance(decoded, list) else [] if decoded is None else [decoded])
                )
                return QueryReply(ok=True, result=msgspec.Raw(codec.encode(value)))
            except Exception as exc:
                return QueryReply(
                    ok=False, error=ApiError(code="query.failed", message=f"{type(exc).__name__}: {exc}")
                )

    # ------------------------------------------------------------------- one step

    async def _step(self, batch: list[Incoming]) -> None:
        incoming = await self._decode(batch)
        if not incoming:
            self._release(_from_inbox(batch))
            return
        if not self._loaded:
            if isinstance(incoming[0].message, StartWorkflow) and not self._history_may_exist:
                self._loaded = True  # optimistic: a new execution; a conflict on append says otherwise
            else:
                await self._load()
        if self.blocked is not None:
            # Keep the messages (a fixed deployment applies them) and say why nothing happens.
            blocked = ApiReply(
                ok=False, error=ApiError(code="workflow.nondeterministic", message=self.blocked)
            )
            for item in incoming:
                await self._reply(item, blocked)
            await self._nak(batch, delay=30.0, hold=None)
            return
        fresh = await self._redo_duplicates(incoming)
        fresh = await self._start_new_runs(fresh)
        for item in fresh:
            self._to_input(item)
        instance = self.instance
        if instance is None:
            for item in fresh:
                self._log.info("execution.message_for_unknown", type=type(item.message).__name__)
            await self._reply_all(fresh, accepted=set())
            sent = Sent()
            self._services.effects.forget_timers(self._fired(incoming), sent)
            self._settle_later(batch, sent)
            return
        now = max(time.time(), self._last_time)
        candidates = [item.event for item in fresh if item.event is not None]
        activation = await instance.run_step(candidates, now, budget=self._services.settings.step_budget)
        if activation.inputs or activation.decisions:
            eager = self._reserve_eager(activation.effects)
            try:
                await self._append(now, activation, fresh, eager)
            except BaseException:
                self._unreserve(eager)
                raise
            assert self.ref is not None
            self.ref.history_length = instance.history_length
            hold = self._hold_for(batch) if eager else None
            sent = await self._services.effects.send(self.ref, activation.effects, eager=eager, hold=hold)
        else:
            sent = Sent()
        accepted = {id(event) for event in activation.inputs}
        await self._reply_all(fresh, accepted=accepted)
        if isinstance(instance.closing, WorkflowContinuedAsNew) and instance is self.instance:
            await self._next_run(instance.closing.input)
        self._services.effects.forget_timers(self._fired(incoming), sent)
        self._settle_later(batch, sent)

    def _fired(self, incoming: list[_Incoming]) -> list[TimerKey]:
        """The keys of the timers whose firings this step took in (applied, stale or
        duplicate): once the firing is in history, its expiry marker must not fire again."""
        return [
            TimerKey(self.partition, self.execution_id, item.message.run, item.message.timer)
            for item in incoming
            if isinstance(item.message, TimerExpired)
        ]

    async def _decode(self, batch: list[Incoming]) -> list[_Incoming]:
        out: list[_Incoming] = []
        for delivery in batch:
            if isinstance(delivery, LocalResult):
                out.append(_Incoming(delivery, delivery.message))
                continue
            try:
                message = codec.decode(
                    codec.inbox_message, delivery.data, what=f"inbox message {delivery.subject}"
                )
            except InvalidPayload as exc:
                # Not something Perdure wrote: keep it out of the way, say why.
                self._log.error("execution.bad_inbox_message", error=str(exc))
                await delivery.term()
                continue
            out.append(_Incoming(delivery, message))
        return out

    def _hold_for(self, batch: list[Incoming]) -> HeldAck:
        """Whose acks wait for this step's eager attempts. A step that only absorbed outcomes
        of one hold's attempts adds its own to that hold (a chain of eager attempts stays
        under its first message's hold, however long); otherwise a new hold (``self._hold``,
        settled by ``_done``) carries this step's inbox messages and the outcomes' holds."""
        inbox = [d for d in batch if isinstance(d, Delivery)]
        parents = [d.hold for d in batch if isinstance(d, LocalResult)]
        if not inbox and parents and all(p is parents[0] for p in parents):
            return parents[0]  # the outcomes are acked by _done, after this step's attempts joined
        self._hold = HeldAck(inbox, parents, spawner(self._services.supervisor))
        return self._hold

    def _reserve_eager(self, effects: list[Effect]) -> list[int]:
        """Activities whose new attempt will run here at once (slots taken now, before the
        append that records them)."""
        local = self._services.effects.local
        if local is None:
            return []
        return [
            effect.decision.seq
            for effect in effects
            if isinstance(effect, StartAttempt)
            and local.reserve(effect.decision.name, effect.decision.options.heartbeat)
        ]

    def _unreserve(self, eager: list[int]) -> None:
        local = self._services.effects.local
        if local is not None and eager:
            local.unreserve(len(eager))

    async def _append(
        self, now: float, activation: Any, fresh: list[_Incoming], eager: list[int] | None = None
    ) -> None:
        step = HistoryStep(
            time=now,
            inputs=activation.inputs,
            decisions=activation.decisions,
            absorbed=[item.delivery.stream_seq for item in fresh if item.delivery.stream_seq],
            runtime=self._services.settings.name,
            eager=eager or [],
        )
        ack = await self._services.conn.publish(
            self._services.names.history(self.execution_id),
            codec.encode(step),
            expected_last_subject_seq=self._last_seq,
        )
        self._last_seq, self._last_time = ack.seq, now
        assert self.instance is not None
        self._remember(self.instance.step_index - 1, step.absorbed, activation.effects)

    def _remember(self, step_index: int, absorbed: list[int], effects: list[Effect]) -> None:
        for seq in absorbed:
            self._absorbed[seq] = step_index
        while len(self._absorbed) > _KEPT_ABSORBED:
            self._absorbed.popitem(last=False)
        self._step_effects[step_index] = effects
        while len(self._step_effects) > _KEPT_STEP_EFFECTS:
            self._step_effects.popitem(last=False)

    async def _redo_duplicates(self, incoming: list[_Incoming]) -> list[_Incoming]:
        """A message already absorbed by a step came back: that step's effects may not have
        happened (crash between append and ack), so perform them again, once per step. So
        are those of the steps after it that absorbed no inbox message (eager outcomes
        only): their effects were covered by this message's held ack alone."""
        fresh: list[_Incoming] = []
        redone: set[int] = set()
        for item in incoming:
            step_index = self._absorbed.get(item.delivery.stream_seq)
            if step_index is None:
                fresh.append(item)
                continue
            if step_index not in redone and self.ref is not None:
                for index in self._covered_by(step_index):
                    redone.add(index)
                    await self._services.effects.perform(self.ref, self._step_effects.get(index, []))
            await self._reply(item, ApiReply(ok=True))
        return fresh

    def _covered_by(self, step_index: int) -> list[int]:
        """``step_index`` and the steps right after it that absorbed no inbox message."""
        absorbing = set(self._absorbed.values())
        covered = [step_index]
        while (following := covered[-1] + 1) in self._step_effects and following not in absorbing:
            covered.append(following)
        return covered

    # ------------------------------------------------------------- inbox -> inputs

    def _to_input(self, item: _Incoming) -> None:
        message = item.message
        match message:
            case StartWorkflow():
                if self.instance is None:
                    self._create(message)
                    item.event = self._started_event(message, run=1)
            case ActivityResult():
                item.event = self._activity_result(item, message)
            case TimerExpired():
                if self.instance is not None and message.run == self.instance.run:
                    item.event = TimerFired(timer=message.timer)
            case CancelWorkflow():
                item.event = CancelRequested(reason=message.reason)
            case TerminateWorkflow():
                item.event = TerminateRequested(reason=message.reason)
            case SignalWorkflow():
                item.event = SignalReceived(name=message.name, payload=message.payload, id=message.id)
            case ChildResult():
                if self.instance is not None and message.run == self.instance.run:
                    item.event = ChildClosed(
                        seq=message.seq, status=message.status, result=message.result, error=message.error
                    )
            case ActivityProgress():
                state = self.instance.activities.get(message.seq) if self.instance is not None else None
                if state is not None and state.nonce == message.nonce and message.run == self.instance.run:  # type: ignore[union-attr]
                    item.event = ActivityProgressed(
                        seq=message.seq, attempt=message.attempt, details=message.details
                    )

    @staticmethod
    def _started_event(message: StartWorkflow, *, run: int) -> WorkflowStarted:
        return WorkflowStarted(
            workflow=message.workflow,
            input=message.input,
            run=run,
            parent=message.parent,
            parent_run=message.parent_run,
            parent_seq=message.parent_seq,
            timeout=message.timeout,
        )

    def _create(self, message: StartWorkflow) -> None:
        definition = self._services.registry.workflow(message.workflow)
        if definition is None:
            raise UnknownWorkflow(f"workflow {message.workflow!r} is not hosted by this runtime")
        self.instance = WorkflowInstance(definition, self.execution_id, run=1)
        self.ref = ExecutionRef(self.execution_id, definition.name, 1, self.partition, time.time())

    def _activity_result(self, item: _Incoming, message: ActivityResult) -> InputEvent | None:
        instance = self.instance
        if instance is None or message.run != instance.run:
            item.refusal = ApiError(code="activity.closed", message="that run of the execution is over")
            return None
        state = instance.activities.get(message.seq)
        if state is None or state.nonce != message.nonce:
            item.refusal = ApiError(
                code="token.invalid",
                message=f"token does not match activity {message.seq} of {self.execution_id} (wrong nonce)",
            )
            return None
        if message.ok and REPLY_HEADER in item.delivery.headers and state.result_codec is not None:
            # A result from outside (a token completion): it must decode as the declared type,
            # or it is refused and the activity stays open for a correct answer.
            try:
                state.result_codec.decode(message.result, what=f"result of activity {state.name!r}")
            except InvalidPayload as exc:
                item.refusal = ApiError(code=InvalidPayload.code, message=exc.message)
                return None
        if message.ok:
            return ActivityCompleted(
                seq=message.seq, attempt=message.attempt, result=message.result or codec.NULL
            )
        assert message.error is not None
        return ActivityFailed(seq=message.seq, attempt=message.attempt, error=message.error)

    # ------------------------------------------------------------------ new runs

    async def _start_new_runs(self, items: list[_Incoming]) -> list[_Incoming]:
        """A start with ``new_run`` (id reuse) of a closed execution begins its next run."""
        rest = []
        for item in items:
            message = item.message
            instance = self.instance
            if (
                isinstance(message, StartWorkflow)
                and message.new_run
                and instance is not None
                and instance.closed
            ):
                self._remember_absorbed(item.delivery.stream_seq)
                await self._next_run(message.input, start=message)
            else:
                rest.append(item)
        return rest

    def _remember_absorbed(self, seq: int) -> None:
        self._absorbed[seq] = -1  # a redelivery needs no effects redone: the new run's step has them

    async def _recover_eager(self, eager: dict[int, StartAttempt]) -> None:
        """Attempts that started eagerly in the runtime that wrote them and are still open:
        unless one runs here, that runtime is gone (or forgot them), so their work items go
        out now (the ``Nats-Msg-Id`` of each makes a second copy harmless)."""
        instance, local = self.instance, self._services.effects.local
        assert instance is not None and self.ref is not None
        lost = []
        for seq, effect in eager.items():
            state = instance.activities.get(seq)
            attempt = effect.decision.attempt
            if state is None or state.closed or state.waiting_retry or state.attempt != attempt:
                continue
            if local is not None and local.is_running(
                attempt_id(self.execution_id, instance.run, seq, attempt)
            ):
                continue
            record = await self._services.effects.read_record(self.ref, record_timer(seq, attempt))
            if record is not None and record.started:
                continue  # handed over with make_async(): its token holder finishes it
            lost.append(effect)
        if lost:
            self._log.info("execution.eager_attempts_recovered", activities=[e.decision.seq for e in lost])
            await self._services.effects.perform(self.ref, list(lost))

    async def _next_run(self, input: msgspec.Raw, *, start: StartWorkflow | None = None) -> None:
        """Start the next run of this execution (continue-as-new, or id reuse) on a fresh history.

        The first step of the new run is appended after the old run's last step, then
        everything before it is purged, so history stays bounded however long the execution
        lives. A crash in between is finished on load (see ``_load``).
        """
        old = self.instance
        assert old is not None and old.started is not None
        services = self._services
        previous = old.started
        message = start or StartWorkflow(
            workflow=previous.workflow,
            input=input,
            parent=previous.parent,
            parent_run=previous.parent_run,
            parent_seq=previous.parent_seq,
            timeout=previous.timeout,
        )
        run = old.run + 1
        now = max(time.time(), self._last_time)
        self.instance = WorkflowInstance(old.definition, self.execution_id, run=run)
        old.evict()
        self.ref = ExecutionRef(self.execution_id, old.definition.name, run, self.partition, now)
        self._absorbed.clear()
        self._step_effects.clear()
        activation = await self.instance.run_step(
            [self._started_event(message, run=run)], now, budget=self._services.settings.step_budget
        )
        await self._append(now, activation, [])
        first_seq = self._last_seq
        self.ref.history_length = self.instance.history_length
        await services.effects.perform(self.ref, activation.effects)
        await purge_subject(
            services.conn,
            stream=services.names.history_stream,
            subject=services.names.history(self.execution_id),
            keep_from_seq=first_seq,
        )
        self._log.info("execution.new_run", run=run)

    # -------------------------------------------------------------------- replies

    async def _reply_all(self, items: list[_Incoming], *, accepted: set[int]) -> None:
        for item in items:
            if REPLY_HEADER not in item.delivery.headers:
                continue
            if item.event is not None and id(item.event) in accepted:
                reply = ApiReply(ok=True)
            else:
                error = item.refusal or ApiError(
                    code="activity.closed",
                    message=f"the activity already completed, failed or timed out in {self.execution_id}; "
                    "this result was ignored",
                )
                reply = ApiReply(ok=False, error=error, closed=error.code == "activity.closed")
            await self._reply(item, reply)

    async def _reply(self, item: _Incoming, reply: ApiReply) -> None:
        subject = item.delivery.headers.get(REPLY_HEADER)
        if subject:
            await self._services.conn.publish_core(subject, codec.encode(reply))

    # --------------------------------------------------------------------- replay

    async def _load(self) -> None:
        """Rebuild the instance by replaying the current run's history through the workflow code."""
        services = self._services
        subject = services.names.history(self.execution_id)
        stored = await services.conn.read_subject(services.names.history_stream, subject)
        self._loaded = True
        if not stored:
            return
        steps = [
            codec.decode(codec.history_step, s.data, what=f"history of {self.execution_id}") for s in stored
        ]
        first = _last_run_start(steps)
        if first > 0:
            # A new run began but the old run's steps were not purged yet (crash in between).
            await purge_subject(
                services.conn,
                stream=services.names.history_stream,
                subject=subject,
                keep_from_seq=stored[first].seq,
            )
            steps = steps[first:]
        started = steps[0].inputs[0] if steps[0].inputs else None
        if not isinstance(started, WorkflowStarted):
            raise InvalidPayload(f"history of {self.execution_id} does not begin with workflow.started")
        definition = services.registry.workflow(started.workflow)
        if definition is None:
            raise UnknownWorkflow(f"workflow {started.workflow!r} is not hosted by this runtime")
        instance = WorkflowInstance(definition, self.execution_id, run=started.run)
        self.instance = instance
        self.ref = ExecutionRef(
            self.execution_id, definition.name, started.run, self.partition, steps[0].time
        )
        eager: dict[int, StartAttempt] = {}  # activity seq -> its latest eagerly started attempt
        try:
            for index, step in enumerate(steps):
                activation = await instance.run_step(
                    step.inputs,
                    step.time,
                    expected=step.decisions,
                    budget=self._services.settings.step_budget,
                )
                self._remember(index, step.absorbed, activation.effects)
                if step.eager:
                    eager.update(_started_attempts(activation.effects, step.eager))
        except NonDeterminismError as exc:
            self.blocked = str(exc)
            self._log.error("execution.nondeterministic", error=str(exc))
            await services.effects.mark_blocked(self.ref, str(exc))
        except BaseException:
            self._forget()  # never keep a half-replayed instance (a step past its budget, say)
            raise
        finally:
            instance.replaying = False
        self._last_seq, self._last_time = stored[-1].seq, steps[-1].time
        self.ref.history_length = instance.history_length
        if eager and self.blocked is None:
            await self._recover_eager(eager)
        if isinstance(instance.closing, WorkflowContinuedAsNew) and self.blocked is None:
            await self._next_run(instance.closing.input)  # the crash came before the next run began


def _started_attempts(effects: list[Effect], seqs: list[int]) -> dict[int, StartAttempt]:
    return {
        effect.decision.seq: effect
        for effect in effects
        if isinstance(effect, StartAttempt) and effect.decision.seq in seqs
    }


def _from_inbox(batch: list[Incoming]) -> int:
    """How many of ``batch`` came from the inbox consumer (and hold its credit)."""
    return sum(1 for delivery in batch if isinstance(delivery, Delivery))


def _last_run_start(steps: list[HistoryStep]) -> int:
    """Index of the step that started the current run (the last ``workflow.started``)."""
    for index in range(len(steps) - 1, -1, -1):
        inputs = steps[index].inputs
        if inputs and isinstance(inputs[0], WorkflowStarted):
            return index
    return 0
