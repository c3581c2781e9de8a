"""WorkflowInstance: one execution's workflow code, its durable state machines and its decisions.

The execution actor calls ``run_step(inputs, time)`` (``activate``, watched: ``run_steps``)
once per step. The instance applies each input (resolving activity and child futures,
firing timers, delivering signals, cancelling), runs the replay loop until the code
blocks, and returns the inputs it accepted, the decisions it made, and the effects those
decisions imply. During replay the same call is given the recorded decisions: a decision
that differs is a ``NonDeterminismError`` naming both.

The instance composes plain parts that share one ``Decisions`` recorder (sequence numbers
per kind tie a decision to its record in history): ``ActivityMachine``, ``ChildMachine``,
``WorkflowTimers``, ``Signals`` and ``Conditions``. It holds activation, patches, the
workflow timeout and closing, and ``evict()``, its teardown. Size: about 480 lines; each of those
is short, and splitting them further would scatter one step's flow over several files.
"""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, assert_never

import msgspec
import structlog

from perdure.runtime.errors import (
    ErrorInfo,
    HistoryConflict,
    NonDeterminismError,
    StepBudgetExceeded,
    info_from_exception,
)
from perdure.runtime.events import (
    ActivityCompleted,
    ActivityFailed,
    ActivityProgressed,
    CancelRequested,
    ChildClosed,
    ClosingDecision,
    Decision,
    InputEvent,
    PatchMarked,
    SignalReceived,
    TerminateRequested,
    TimerCancelled,
    TimerFired,
    TimerStarted,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowContinuedAsNew,
    WorkflowFailed,
    WorkflowStarted,
    WorkflowTerminated,
)
from perdure.runtime.messages import Status
from perdure.runtime.timer_ids import TimerId

from .activity_machine import ActivityMachine, ActivityState
from .child_machine import ChildMachine, ChildState
from .decisions import Decisions, bounded, describe, same_command
from .effects import CancelTimer, Effect, NotifyParent, StartTimer, UpdateIndex
from .inline_steps import SliceExceeded, StepMoved, inline_steps
from .log_context import bind_execution
from .replay_loop import ReplayLoop
from .signals import Conditions, Signals
from .workflow_threads import StepInterrupted, StepOverrun, workflow_threads
from .workflow_timers import WorkflowTimers

if TYPE_CHECKING:
    from .definitions import WorkflowDefinition

T = TypeVar("T")
log = structlog.get_logger("perdure.workflow")
__all__ = ["Activation", "ContinueAsNew", "WorkflowInstance", "describe", "evict", "same_command"]


class ContinueAsNew(BaseException):
    """Raised by ``workflow.continue_as_new()``: end this run, start the next with ``input``."""

    def __init__(self, input: msgspec.Raw) -> None:
        super().__init__("continue as new")
        self.input = input


@dataclass(frozen=True, slots=True)
class Activation:
    inputs: list[InputEvent]
    decisions: list[Decision]
    effects: list[Effect]


class WorkflowInstance:
    def __init__(self, definition: WorkflowDefinition[Any, Any], execution_id: str, run: int = 1) -> None:
        self.definition = definition
        self.execution_id = execution_id
        self.run = run
        self.loop = ReplayLoop(self)  # type: ignore[abstract]  # what it does not implement, it refuses
        self._random: random.Random | None = None  # made on first use: 2.8 KiB of state each
        self.replaying = False
        self.history_length = 0
        self.step_index = 0
        self.started: WorkflowStarted | None = None
        self.decisions = Decisions(self._where)
        self.activity = ActivityMachine(self.decisions, self.loop)
        self.child = ChildMachine(self.decisions, self.loop, execution_id, run)
        self.timers = WorkflowTimers(self.decisions, self.loop)
        self.signals = Signals(self.loop)
        self.conditions = Conditions(self.loop)
        self._main: asyncio.Task[Any] | None = None
        self._cancel_requested = False
        self._patches: dict[str, bool] = {}
        self.queries: dict[str, Callable[..., Any]] = {}
        self._workflow_timer = False
        self.evicted = False
        self._stepping = False  # workflow code is running (possibly in a workflow thread)
        self._lock = threading.Lock()  # evict() from the event loop, a step in a workflow thread

    # ------------------------------------------------------------------ activation

    @property
    def closing(self) -> ClosingDecision | None:
        return self.decisions.closing

    @property
    def closed(self) -> bool:
        return self.decisions.closed

    @property
    def activities(self) -> dict[int, ActivityState]:
        return self.activity.activities

    @property
    def children(self) -> dict[int, ChildState]:
        return self.child.children

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    @property
    def random(self) -> random.Random:
        """The execution's generator, seeded by execution and run: replays draw the same numbers."""
        if self._random is None:
            self._random = random.Random(f"{self.execution_id}:{self.run}")
        return self._random

    def dormant(self, now: float, horizon: float) -> bool:
        """Nothing of its own will happen within ``horizon`` seconds: closed, or waiting only
        for timers due later (or for outside messages: signals, cancellation). Open
        activities and children keep it awake."""
        if self.closed:
            return True
        if self.activity.any_open or self.child.any_open:
            return False
        return self.timers.all_after(now + horizon)

    def evict(self) -> None:
        """The owner drops this instance (cache eviction, dormancy, a new run, a stop): tear
        it down now, on purpose, rather than leave its coroutines to the garbage collector,
        which would run their ``finally`` blocks outside the workflow (see ``abandon.py``).
        No workflow code runs, no command is kept, nothing is logged. A step still running
        (past its budget, in a workflow thread) tears down when it ends."""
        with self._lock:
            if self.evicted:
                return
            self.evicted = True
            if not self._stepping:
                self._tear_down()

    def _tear_down(self) -> None:
        self.loop.abandon()
        self._main = None
        self.decisions.begin(None)
        self.timers.clear()
        self.signals.clear()
        self.conditions.clear()
        # No cycle left through the instance (its loop and its decisions point back at it), so
        # reference counting frees it now. Left to the cyclic collector, about 30 objects per
        # finished workflow piled up until a collection: a pause of ~60 ms at the daemon's
        # thresholds (runtime/daemon.tune_gc), in the middle of whatever ran then.
        self.loop.detach()
        self.decisions.detach()

    async def run_step(
        self,
        inputs: list[InputEvent],
        time: float,
        *,
        expected: list[Decision] | None = None,
        budget: float | None = None,
    ) -> Activation:
        """``activate``, watched (inline first, then in a workflow thread; ``run_steps``), so that
        code which blocks (``time.sleep``, a busy loop) holds neither the runtime's event loop
        nor its leases for long; past ``budget`` seconds
        the step fails with ``StepBudgetExceeded`` (see ``workflow_threads.py``). The instance
        is then unusable: the owner evicts it, and it tears down when the code lets go."""
        return await self.run_steps(lambda: self.activate(inputs, time, expected=expected), budget=budget)

    async def run_steps(self, steps: Callable[[], T], *, budget: float | None = None) -> T:
        """Run ``steps`` (a function calling ``activate`` once, or once per step of a replay):
        inline on the event loop, watched (``inline_steps.py``), or in one workflow-thread
        hop for a workflow type whose step once ran past the inline slice; each ``activate``
        has the step budget."""
        threads = workflow_threads()
        budget = threads.budget if budget is None else budget  # the runtime's Settings.step_budget
        if budget <= 0:
            return steps()
        inline = inline_steps()
        if not self.definition.steps_in_threads and budget > inline.slice and inline.available():
            try:
                return inline.run(steps)
            except SliceExceeded as exc:
                self.definition.steps_in_threads = True
                log.info("workflow.steps_in_threads", workflow=self.definition.name, why=str(exc))
                raise StepMoved(f"{self._where()}: a slow step moves to a workflow thread") from None
        try:
            return await threads.run(steps, budget=budget, progress=lambda: self.step_index)
        except StepOverrun as overrun:
            raise StepBudgetExceeded(
                f"{self._where()}: workflow code {overrun}; workflow code must not block "
                "(await perdure.sleep() for a durable timer, do I/O and heavy work in an activity)"
            ) from None

    def activate(
        self, inputs: list[InputEvent], time: float, *, expected: list[Decision] | None = None
    ) -> Activation:
        """Apply ``inputs`` at workflow time ``time``, run the code until it blocks, collect decisions."""
        with self._lock:
            if self.evicted:
                raise HistoryConflict(f"{self._where()}: the instance was evicted; history is replayed")
            if self._stepping:
                raise HistoryConflict(
                    f"{self._where()}: a step past its budget still runs; history is replayed"
                )
            self._stepping = True
        try:
            return self._activate(inputs, time, expected)
        finally:
            while True:
                try:
                    self._end_step()
                    break
                except StepInterrupted:
                    continue  # a poke for a step past its budget: the step ends all the same

    def _end_step(self) -> None:
        with self._lock:
            self._stepping = False
            if self.evicted:
                self._tear_down()

    def _activate(self, inputs: list[InputEvent], time: float, expected: list[Decision] | None) -> Activation:
        self.loop.now = time
        self.replaying = expected is not None
        decisions = self.decisions
        decisions.begin(expected)
        accepted: list[InputEvent] = []
        for event in inputs:
            if self.closed:
                break
            if self._apply(event):
                accepted.append(event)
                decisions.absorbed(event)
            elif expected is not None:
                raise NonDeterminismError(
                    f"{self._where()}: history input {describe(event)} does not apply to the current code"
                )
        self._run_until_blocked()
        self._finish_if_main_done()
        pending = decisions.pending
        if pending.error is not None:
            raise pending.error
        if pending.expected:
            raise NonDeterminismError(
                f"{self._where()}: history has {describe(pending.expected[0])} but the code did not issue it"
            )
        self.step_index += 1
        self.history_length += len(accepted) + len(pending.decisions)
        return Activation(accepted, pending.decisions, pending.effects)

    def _run_until_blocked(self) -> None:
        """Run ready callbacks; re-check conditions, which may make more code ready."""
        self.loop.run_until_blocked(self.conditions.check)

    def _where(self) -> str:
        return f"workflow {self.definition.name!r} execution {self.execution_id!r} step {self.step_index}"

    # ---------------------------------------------------------------------- inputs

    def _apply(self, event: InputEvent) -> bool:
        match event:
            case WorkflowStarted():
                return self._start(event)
            case ActivityCompleted():
                return self.activity.completed(event)
            case ActivityFailed():
                return self.activity.failed(event)
            case ActivityProgressed():
                return self.activity.progressed(event)
            case TimerFired():
                return self._timer_fired(event.timer)
            case SignalReceived():
                return self.signals.received(event)
            case CancelRequested():
                return self._cancel(event)
            case TerminateRequested():
                return self._terminate(event)
            case ChildClosed():
                return self.child.closed(event)
            case _:
                assert_never(event)

    def _start(self, event: WorkflowStarted) -> bool:
        if self._main is not None:
            return False
        self.started = event
        self.decisions.effect(UpdateIndex("RUNNING"))
        if event.timeout is not None:
            timer = TimerId.workflow_timeout().format()
            decision = self.decisions.decide(TimerStarted(timer=timer, fire_at=self.loop.now + event.timeout))
            self.decisions.effect(StartTimer(timer, decision.fire_at))
            self._workflow_timer = True
        self._main = self.loop.create_task(self._run_main(event.input), name=f"workflow:{self.execution_id}")
        return True

    async def _run_main(self, raw_input: msgspec.Raw) -> Any:
        bind_execution(self.execution_id, self.run)  # the workflow's task, wherever it was created
        definition = self.definition
        args: tuple[Any, ...] = ()
        if definition.takes_input:
            args = (definition.input_codec.decode(raw_input, what=f"input of workflow {definition.name!r}"),)
        return await definition.fn(*args)

    def _timer_fired(self, text: str) -> bool:
        timer = TimerId.parse(text)
        if timer is None:
            return False
        if timer.kind == "sleep":
            return self.timers.fired(timer)
        if timer.kind == "workflow_timeout":
            return self._workflow_timed_out()
        return self.activity.timer_fired(timer)

    def _workflow_timed_out(self) -> bool:
        if not self._workflow_timer:
            return False
        self._workflow_timer = False
        timeout = self.started.timeout if self.started else None
        error = ErrorInfo(
            code="workflow.timeout",
            type="WorkflowTimedOut",
            message=f"workflow did not finish within {timeout}s",
            retryable=False,
        )
        self._close(WorkflowFailed(error=error), "FAILED", error=error)
        return True

    # --------------------------------------------------------------------- closing

    def _finish_if_main_done(self) -> None:
        main = self._main
        if main is None or not main.done() or self.closed:
            return
        if main.cancelled():
            self._close(WorkflowCancelled(reason="cancelled"), "CANCELLED")
            return
        exc = main.exception()
        if isinstance(exc, ContinueAsNew):
            self._close(WorkflowContinuedAsNew(input=exc.input), None)
            return
        if exc is None:
            try:
                what = f"result of workflow {self.definition.name!r}"
                raw = self.definition.result_codec.encode(main.result(), what=what)
                self.decisions.check_payload(raw, what=what)
            except Exception as encode_error:
                exc = encode_error
            else:
                self._close(WorkflowCompleted(result=raw), "COMPLETED", result=raw)
                return
        if isinstance(exc, NonDeterminismError):
            return  # activate() raises it
        if isinstance(exc, asyncio.CancelledError):
            self._close(WorkflowCancelled(reason=str(exc)), "CANCELLED")
            return
        info = bounded(info_from_exception(exc, code="workflow.failed"))
        self._close(WorkflowFailed(error=info), "FAILED", error=info)

    def _close(
        self,
        decision: ClosingDecision,
        status: Status | None,
        *,
        result: msgspec.Raw | None = None,
        error: ErrorInfo | None = None,
    ) -> None:
        self._drop_open_work()
        self.decisions.close(decision)
        if status is None:
            return  # continue-as-new: the actor starts the next run
        self.decisions.effect(UpdateIndex(status, result=result, error=error))
        started = self.started
        if started is not None and started.parent:
            self.decisions.effect(
                NotifyParent(
                    started.parent, started.parent_run, started.parent_seq, status, result=result, error=error
                )
            )

    def _drop_open_work(self) -> None:
        """A closed run leaves nothing behind: timers cancelled, activities closed, children cancelled."""
        self.timers.cancel_all()
        if self._workflow_timer:
            self._workflow_timer = False
            timer = TimerId.workflow_timeout().format()
            self.decisions.decide(TimerCancelled(timer=timer))
            self.decisions.effect(CancelTimer(timer))
        self.activity.close_open()
        self.child.cancel_open()

    def _cancel(self, event: CancelRequested) -> bool:
        if self._cancel_requested or self._main is None:
            return False
        self._cancel_requested = True
        self._main.cancel(event.reason or "cancel requested")
        return True

    def _terminate(self, event: TerminateRequested) -> bool:
        """End the execution now, without running any more workflow code."""
        if self._main is None:
            return False
        error = ErrorInfo(
            code="workflow.terminated",
            type="WorkflowTerminated",
            message=event.reason or "terminated",
            retryable=False,
        )
        self._close(WorkflowTerminated(reason=event.reason), "TERMINATED", error=error)
        return True

    # ------------------------------------------------------- the loop's timer hooks

    def start_timer(self, handle: asyncio.TimerHandle) -> None:
        """Called by the loop for ``call_at``: every asyncio timer in workflow code is durable."""
        self.timers.start(handle)

    def cancel_timer(self, handle: asyncio.TimerHandle) -> None:
        self.timers.cancel(handle)

    # --------------------------------------------------------------- authoring API

    def patched(self, patch: str) -> bool:
        """True when this execution takes the new branch of ``patch`` (see ``workflow.patched``)."""
        if patch in self._patches:
            return self._patches[patch]
        expected = self.decisions.pending.expected
        if expected is not None and not (
            expected and isinstance(expected[0], PatchMarked) and expected[0].patch == patch
        ):
            taken = False  # replaying history recorded before the patch existed: the old path
        else:
            self.decisions.decide(PatchMarked(patch=patch))
            taken = True
        self._patches[patch] = taken
        return taken

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self.random.getrandbits(128), version=4)

    def continue_as_new(self, input: msgspec.Raw) -> ContinueAsNew:
        what = f"input of workflow {self.definition.name!r} (continue-as-new)"
        self.decisions.check_payload(input, what=what)
        return ContinueAsNew(input)


def evict(instance: WorkflowInstance | None) -> None:
    """Tear ``instance`` down on purpose as its owner drops it (see ``WorkflowInstance.evict``)."""
    if instance is not None:
        instance.evict()
