"""ExecutionActor: one execution, one step at a time.

A step takes the inbox messages waiting for the execution (what fits in one history message, step_inputs),
translates the new ones into history inputs (``inbox_translation``), runs the workflow code on them, appends
one ``HistoryStep`` (``history_log``; a conflict means another owner wrote: reload, decide again), sends the
step's effects, and acks the messages once all is stored (``step_acks``). A message that comes back after a
crash is recognised by the ``redo_ledger``, and its step's effects are performed again. The actor keeps the
mailbox, the ``Phase`` of its state and the conflict retries; replay (``run_replay``), eager attempts
(``local_activities``), new runs (``run_rollover``), replies, queries, BLOCKED (``blocked``): own modules.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from perdure.runtime import tracing
from perdure.runtime.errors import ErrorInfo, HistoryConflict, ScopeClosed, UnknownWorkflow
from perdure.runtime.events import HistoryStep, WorkflowStarted
from perdure.runtime.messages import ApiReply, QueryReply, StartWorkflow
from perdure.runtime.supervisor import Supervisor

from . import step_inputs
from .effect_runner import ExecutionRef, Sent
from .effects import Effect
from .history_log import EndedBlocked, HistoryLog
from .inbox_translation import translate
from .instance import Activation, WorkflowInstance, evict
from .local_activities import EagerSteps, recover_eager, spawner
from .log_context import bind_execution, bind_run, execution_context
from .queries import answer_query
from .redo_ledger import RedoLedger, due_again
from .replies import OK, send_reply, verdict, wants_reply
from .run_replay import replay_run
from .run_rollover import begin_next_run, continuation_start, pending_continuation, reuses_id
from .step_acks import Incoming, StepAcks
from .step_failures import StepFailures, divergence
from .step_inputs import StepInput, decode_batch, events_of, fired_timers, needs_current, trace_of

if TYPE_CHECKING:
    from .definitions import WorkflowDefinition
    from .worker import WorkerServices

log = structlog.get_logger("perdure.execution")

_MAX_CONFLICT_RETRIES = 5
DORMANT_HORIZON = 30.0  # seconds: an execution with nothing of its own due sooner is not cached


class Phase(enum.Enum):
    """What the actor holds in memory of its execution."""

    NEW = "new"  # nothing read, none seen: a start may assume no history (a conflict says otherwise)
    UNLOADED = "unloaded"  # nothing in memory, history may exist: the next step replays it
    LOADED = "loaded"  # the current run replayed (or none exists yet): steps run on it
    BLOCKED = "blocked"  # it cannot run: its messages wait in <NS>_DEAD for code that can (blocked.py)


class ExecutionActor:
    def __init__(
        self,
        services: WorkerServices,
        execution_id: str,
        partition: int,
        scope: Supervisor,
        on_dormant: Callable[[ExecutionActor], None] = lambda actor: None,
    ) -> None:
        self.execution_id = execution_id
        self.partition = partition
        self._services = services
        self._scope = scope  # its partition's: its drains and step acks stop with the partition
        self._on_dormant = on_dormant
        self.mailbox: list[Incoming] = []
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._lock = asyncio.Lock()  # a step and a query never interleave
        self.phase = Phase.NEW
        self._blocked: ErrorInfo | None = None  # why, while BLOCKED
        self._failures = StepFailures()
        self.instance: WorkflowInstance | None = None
        self.ref: ExecutionRef | None = None
        self._history = HistoryLog(services.conn, services.names, execution_id, services.metrics)
        self._ledger = RedoLedger()
        # A HeldAck outlives the partition (its nak must reach the next owner): the runtime's.
        self._eager = EagerSteps(services.effects.local, spawner(services.supervisor))
        self._acks = StepAcks(spawner(self._scope), lambda: log)  # its lines: the drain's ids

    # ------------------------------------------------------------------ mailbox

    @property
    def idle(self) -> bool:
        return not self._draining and not self.mailbox and not self._acks.settling

    async def wait_idle(self) -> None:
        await self._idle.wait()
        await self._acks.wait()

    def deliver(self, delivery: Incoming) -> None:
        self.mailbox.append(delivery)
        if not self._draining:
            try:
                self._scope.spawn(self._drain(), name=f"execution:{self.execution_id}")
            except ScopeClosed:  # its partition stopped: the messages go to the next owner
                self._acks.abandon(self.mailbox)
                return
            self._draining = True
            self._idle.clear()

    async def _drain(self) -> None:
        bind_execution(self.execution_id)  # a task of its own (deliver): every line of it, log_context
        try:
            while self.mailbox:  # what fits in one step's history message (step_inputs)
                batch, self.mailbox = step_inputs.take_step(self.mailbox, self._services.conn.max_payload)
                async with self._lock:
                    await self._handle(batch)
        finally:
            self._draining = False
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
        began = time.perf_counter()
        for _ in range(_MAX_CONFLICT_RETRIES):
            try:
                with tracing.step_scope():
                    await self._step(batch)
                self._services.metrics.step_done(time.perf_counter() - began)
                self._failures.crashes = 0
                return
            except HistoryConflict as exc:  # or inline_steps.StepMoved: step again
                log.info("execution.conflict", error=str(exc))
                self._forget(conflict=exc.history_written)
            except Exception as exc:  # parked if poison (step_failures), else back after a delay
                self._forget()
                reason, delay = self._failures.failed(exc, batch, log)
                if reason is not None:
                    return await self._park(batch, reason)
                return await self._acks.nak(batch, delay=delay, hold=self._eager.take_hold())
        await self._acks.nak(batch, delay=0.5, hold=self._eager.take_hold())

    async def _park(self, batch: list[Incoming], reason: ErrorInfo) -> None:
        """BLOCKED: ``batch`` waits in <NS>_DEAD, out of the inbox; a terminate in it ends the run."""
        parking = self._services.blocked.park(self.execution_id, self.partition, batch, reason)
        self.phase, self._blocked = Phase.BLOCKED, reason
        if await self._acks.park(batch, hold=self._eager.take_hold(), to_dead=parking):
            self._forget()  # a terminate ended it

    def _forget(self, *, conflict: bool = False) -> None:
        """Drop the in-memory state; the next step replays history. After a conflict, or
        once history was seen, never assume a fresh execution again."""
        seen = conflict or self._history.last_seq > 0 or self.phase in (Phase.UNLOADED, Phase.BLOCKED)
        evict(self.instance)
        self.instance = None
        self.ref = None
        self._history.reset()
        self._ledger.clear()
        self._blocked = None
        self.phase = Phase.UNLOADED if seen else Phase.NEW

    async def query(self, name: str, args: msgspec.Raw) -> QueryReply:
        """Answer a query from live state (replaying history first if needed); writes nothing."""
        async with self._lock:
            with execution_context(self.execution_id):  # only its span: the query task serves others too
                if self.phase in (Phase.NEW, Phase.UNLOADED):
                    await self._load()
                return answer_query(self.instance, self.execution_id, name, args, blocked=self._blocked)

    # ------------------------------------------------------------------- one step

    async def _step(self, batch: list[Incoming]) -> None:
        incoming = await decode_batch(batch, self._services.blocked.dead, self.execution_id)
        if not incoming:
            self._acks.release(batch)
            return
        if self.phase is Phase.NEW and isinstance(incoming[0].message, StartWorkflow):
            self.phase = Phase.LOADED  # optimistic: a new execution; a conflict on append says otherwise
        elif self.phase in (Phase.NEW, Phase.UNLOADED):
            await self._load()
        if self.phase is Phase.BLOCKED:  # parked (requests answered why), or ended by a terminate
            assert self._blocked is not None
            return await self._park(batch, self._blocked)
        fresh = await self._redo_duplicates(incoming)
        fresh = await self._start_new_runs(fresh)
        self._translate(fresh)
        instance = self.instance
        if instance is None:
            for item in fresh:
                log.info("execution.message_for_unknown", type=type(item.message).__name__)
            await self._reply_all(fresh, accepted=set())
            sent = Sent()
            self._services.effects.forget_timers(
                fired_timers(incoming, self.partition, self.execution_id), sent
            )
            self._acks.settle_later(batch, sent, self._eager.take_hold(), self._maybe_dormant)
            return
        bind_run(instance.run)
        now = max(time.time(), self._history.last_time)
        tracing.begin_step(self.execution_id, trace_of(instance.started, fresh))
        activation = await instance.run_step(events_of(fresh), now)
        if activation.inputs or activation.decisions:
            # Only what the step's end state still wants: an attempt started and then
            # closed within the step (a retry's timer and the previous attempt's result in
            # one batch) is never started.
            effects = due_again(activation.effects, instance.activities, index_current=True)
            eager = self._eager.eligible(effects)
            absorbed = [item.delivery.stream_seq for item in fresh if item.delivery.stream_seq]
            await self._commit(instance, now, activation, effects, absorbed=absorbed, eager=eager)
            assert self.ref is not None
            self.ref.history_length = instance.history_length
            hold = self._eager.hold_for(batch) if eager else None
            sent = await self._services.effects.send(
                self.ref, effects, eager=eager, hold=hold, wanted=self._attempt_wanted
            )
        else:
            sent = Sent()
            # Nothing applied: first make sure this state is not behind history (step_inputs).
            await self._history.require_current(needs_current(fresh))
        await self._reply_all(fresh, accepted={id(event) for event in activation.inputs})
        next_input = pending_continuation(instance)
        if next_input is not None and instance is self.instance:
            assert instance.started is not None
            await self._next_run(continuation_start(instance.started, next_input))
        self._services.effects.forget_timers(fired_timers(incoming, self.partition, self.execution_id), sent)
        self._acks.settle_later(batch, sent, self._eager.take_hold(), self._maybe_dormant)

    def _translate(self, items: list[StepInput]) -> None:
        """Each message against the run as it stands; a start creates the run first."""
        for item in items:
            from_outside = wants_reply(item.delivery.headers)
            item.translation = translation = translate(
                item.message, self.instance, execution_id=self.execution_id, from_outside=from_outside
            )
            if isinstance(translation, WorkflowStarted):
                item.translation = translation = tracing.with_trace(translation, item.delivery.headers)
                self._create(translation.workflow)

    def _definition(self, workflow: str) -> WorkflowDefinition[Any, Any]:
        definition = self._services.registry.workflow(workflow)
        if definition is None:
            raise UnknownWorkflow(f"workflow {workflow!r} is not hosted by this runtime")
        return definition

    def _create(self, workflow: str) -> None:
        definition = self._definition(workflow)
        self.instance = WorkflowInstance(definition, self.execution_id, run=1)
        self.ref = ExecutionRef(self.execution_id, definition.name, 1, self.partition, time.time())

    async def _commit(
        self,
        instance: WorkflowInstance,
        now: float,
        activation: Activation,
        effects: list[Effect] | None = None,
        *,
        absorbed: Sequence[int] = (),
        eager: Sequence[int] = (),
    ) -> int:
        """Append the step (expected last sequence) and remember it for redo."""
        step = HistoryStep(
            time=now,
            inputs=activation.inputs,
            decisions=activation.decisions,
            absorbed=list(absorbed),
            runtime=self._services.settings.name,
            eager=list(eager),
        )
        seq = await self._history.append(step)
        kept = activation.effects if effects is None else effects
        self._ledger.remember(instance.step_index - 1, step.absorbed, kept)
        return seq

    def _attempt_wanted(self, seq: int, attempt: int) -> bool:
        """Asked by an eager attempt as it starts: the execution still runs that attempt."""
        state = self.instance.activities.get(seq) if self.instance is not None else None
        return state is None or (not state.closed and not state.waiting_retry and state.attempt == attempt)

    async def _redo_duplicates(self, incoming: list[StepInput]) -> list[StepInput]:
        """A message already absorbed by a step came back: that step's effects may not have
        happened (crash between append and ack), so perform again those still due given
        what history says now (``RedoLedger.plan``, ``due_again``, ``EffectRunner.redo``)."""
        duplicates, steps = self._ledger.plan([item.delivery.stream_seq for item in incoming])
        instance, ref = self.instance, self.ref
        if instance is not None and ref is not None and steps:
            latest_index = self._ledger.latest_index_step()
            for index in steps:
                effects = self._ledger.effects_of(index)
                due = due_again(effects, instance.activities, index_current=index == latest_index)
                await self._services.effects.redo(ref, due)
        for item in incoming:
            if item.delivery.stream_seq in duplicates:
                await self._reply(item, OK)
        return [item for item in incoming if item.delivery.stream_seq not in duplicates]

    # ------------------------------------------------------------------ new runs

    async def _start_new_runs(self, items: list[StepInput]) -> list[StepInput]:
        """A start with ``new_run`` (id reuse) of a closed execution begins its next run."""
        rest = []
        for item in items:
            message = item.message
            if reuses_id(message, self.instance):
                trace = tracing.begin_new_run(self.execution_id, item.delivery.headers)
                await self._next_run(message, trace=trace)
                self._ledger.absorbed_by_new_run(item.delivery.stream_seq)
            else:
                rest.append(item)
        return rest

    async def _next_run(self, start: StartWorkflow, *, trace: str = "") -> None:
        old = self.instance
        assert old is not None
        self._ledger.clear()
        new = await begin_next_run(
            old,
            start,
            partition=self.partition,
            not_before=self._history.last_time,
            commit=self._commit,
            history=self._history,
            effects=self._services.effects,
            trace=trace,
        )
        self.instance, self.ref = new.instance, new.ref
        bind_run(new.instance.run)
        log.info("execution.new_run")

    # -------------------------------------------------------------------- replies

    async def _reply_all(self, items: list[StepInput], *, accepted: set[int]) -> None:
        for item in items:
            if wants_reply(item.delivery.headers):
                taken = item.translation is not None and id(item.translation) in accepted
                reply = verdict(
                    item.message, item.translation, accepted=taken, execution_id=self.execution_id
                )
                await self._reply(item, reply)

    async def _reply(self, item: StepInput, reply: ApiReply) -> None:
        await send_reply(self._services.conn, item.delivery.headers, reply)

    # --------------------------------------------------------------------- replay

    async def _load(self) -> None:
        """Rebuild the instance by replaying the current run's history through the workflow code."""
        began = time.perf_counter()
        current = await self._history.load()
        if current is None or isinstance(current, EndedBlocked):  # none yet, or closed while BLOCKED
            closed = self._services.blocked.without_replay(current, self.execution_id, self.partition)
            self.phase, (self.instance, self.ref) = Phase.LOADED, await closed
            return
        definition = self._definition(current.started.workflow)
        replayed = await replay_run(
            current, definition, execution_id=self.execution_id, partition=self.partition, ledger=self._ledger
        )
        self._services.metrics.replayed(time.perf_counter() - began)
        self.phase = Phase.LOADED  # only now: a replay that raised (from a query) leaves nothing half-loaded
        self.instance, self.ref = instance, ref = replayed.instance, replayed.ref
        bind_run(instance.run)
        if replayed.divergence is not None:
            await self._block(replayed.divergence)
            return
        if replayed.eager:
            recovered = await recover_eager(replayed.eager, instance.activities, ref, self._services.effects)
            if recovered:
                log.info("execution.eager_attempts_recovered", activities=recovered)
        next_input = pending_continuation(instance)
        if next_input is not None:  # the crash came before the next run began
            assert instance.started is not None
            await self._next_run(continuation_start(instance.started, next_input))

    async def _block(self, reason: str) -> None:
        self.phase, self._blocked = Phase.BLOCKED, divergence(reason)
        self._services.metrics.execution_blocked(self._blocked.code)
        log.error("execution.nondeterministic", error=reason)
        assert self.ref is not None
        await self._services.effects.mark_blocked(self.ref, reason)


__all__ = ["DORMANT_HORIZON", "ExecutionActor", "Phase", "UnknownWorkflow"]
