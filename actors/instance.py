"""WorkflowInstance: one execution's workflow code, its durable state machines and its decisions.

The execution actor calls ``activate(inputs, time)`` once per step. The instance applies
each input (resolving activity and child futures, firing timers, delivering signals,
cancelling), runs the replay loop until the code blocks, and returns the inputs it
accepted, the decisions it made, and the effects those decisions imply. During replay the
same call is given the recorded decisions: a decision that differs is a
``NonDeterminismError`` naming both.

Sequence numbers are per kind (``activity``, ``timer``, ``child``) and tie a decision to
its record in history. Activities and children have state machines of their own
(``ActivityMachine``, ``ChildMachine``); this module holds activation, timers, signals,
conditions, patches and closing.
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, assert_never

import msgspec
import structlog

from perdure.runtime import limits
from perdure.runtime.errors import (
    ErrorInfo,
    HistoryConflict,
    NonDeterminismError,
    PayloadTooLarge,
    StepBudgetExceeded,
    info_from_exception,
)
from perdure.runtime.events import (
    ActivityCompleted,
    ActivityFailed,
    ActivityProgressed,
    ActivityRetrying,
    ActivityScheduled,
    CancelRequested,
    ChildClosed,
    ChildStarted,
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

from .activity_machine import ActivityMachine, ActivityState
from .child_machine import ChildMachine
from .effects import CancelTimer, Effect, NotifyParent, StartTimer, UpdateIndex
from .replay_loop import ReplayLoop
from .workflow_threads import StepOverrun, workflow_threads

if TYPE_CHECKING:
    from .definitions import WorkflowDefinition

log = structlog.get_logger("perdure.workflow")

WORKFLOW_TIMEOUT_TIMER = "w.timeout"
EVENT_OVERHEAD = 256  # bytes of JSON around one event's payload in a history step (generous)
ERROR_TEXT_LIMIT = 32 * 1024  # characters of a failure's message and traceback kept in history


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


@dataclass(slots=True)
class _Pending:
    decisions: list[Decision] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    expected: collections.deque[Decision] | None = None
    error: NonDeterminismError | None = None
    size: int = 0  # bytes of the step's history message so far (payloads, plus EVENT_OVERHEAD each)


class WorkflowInstance(ActivityMachine, ChildMachine):
    # The largest payload one decision may carry, and one step's history message in all
    # (runtime/limits.py; the default server's). An owner on a server with another
    # max_payload sets it from the connection.
    payload_limit: int = limits.payload_limit(None)

    def __init__(self, definition: WorkflowDefinition[Any, Any], execution_id: str, run: int = 1) -> None:
        self.definition = definition
        self.execution_id = execution_id
        self.run = run
        self.loop = ReplayLoop(self)
        self.random = random.Random(f"{execution_id}:{run}")
        self.replaying = False
        self.history_length = 0
        self.step_index = 0
        self.started: WorkflowStarted | None = None
        self.closing: ClosingDecision | None = None
        self.activities: dict[int, ActivityState] = {}
        self._seq: dict[str, int] = collections.defaultdict(int)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._timer_ids: dict[int, str] = {}
        self._main: asyncio.Task[Any] | None = None
        self._pending = _Pending()
        self._cancel_requested = False
        self._signals: dict[str, collections.deque[msgspec.Raw]] = collections.defaultdict(collections.deque)
        self._signal_waiters: dict[str, collections.deque[asyncio.Future[msgspec.Raw]]] = (
            collections.defaultdict(collections.deque)
        )
        self._signal_ids: set[str] = set()
        self._conditions: list[tuple[Callable[[], bool], asyncio.Future[bool]]] = []
        self._patches: dict[str, bool] = {}
        self.queries: dict[str, Callable[..., Any]] = {}
        self._workflow_timer = False
        self.evicted = False
        self._stepping = False  # workflow code is running (possibly in a workflow thread)
        self._lock = threading.Lock()  # evict() from the event loop, a step in a workflow thread
        ChildMachine.__init__(self)

    # ------------------------------------------------------------------ activation

    @property
    def closed(self) -> bool:
        return self.closing is not None

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    def dormant(self, now: float, horizon: float) -> bool:
        """Nothing of its own will happen within ``horizon`` seconds: closed, or waiting only
        for timers due later (or for outside messages: signals, cancellation). Open
        activities and children keep it awake."""
        if self.closed:
            return True
        if any(not a.closed for a in self.activities.values()):
            return False
        if any(not c.closed for c in self.children.values()):
            return False
        return all(handle.when() > now + horizon for handle in self._timers.values())

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
        self._pending = _Pending()
        self._timers.clear()
        self._timer_ids.clear()
        self._signal_waiters.clear()
        self._conditions.clear()

    async def run_step(
        self, inputs: list[InputEvent], time: float, *, budget: float, expected: list[Decision] | None = None
    ) -> Activation:
        """``activate`` in a workflow thread, so that code which blocks (``time.sleep``, a busy
        loop) holds neither the runtime's event loop nor its leases; past ``budget`` seconds
        the step fails with ``StepBudgetExceeded`` (see ``workflow_threads.py``). The instance
        is then unusable: the owner evicts it, and it tears down when the code lets go."""
        if budget <= 0:
            return self.activate(inputs, time, expected=expected)
        try:
            return await workflow_threads().run(
                lambda: self.activate(inputs, time, expected=expected), budget=budget
            )
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
            self._stepping = True
        try:
            return self._activate(inputs, time, expected)
        finally:
            with self._lock:
                self._stepping = False
                if self.evicted:
                    self._tear_down()

    def _activate(self, inputs: list[InputEvent], time: float, expected: list[Decision] | None) -> Activation:
        self.loop.now = time
        self.replaying = expected is not None
        self._pending = _Pending(expected=collections.deque(expected) if expected is not None else None)
        accepted: list[InputEvent] = []
        for event in inputs:
            if self.closed:
                break
            if self._apply(event):
                accepted.append(event)
                self._pending.size += EVENT_OVERHEAD + _payload_bytes(event)
            elif expected is not None:
                raise NonDeterminismError(
                    f"{self._where()}: history input {describe(event)} does not apply to the current code"
                )
        self._run_until_blocked()
        self._finish_if_main_done()
        pending = self._pending
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
        while True:
            self.loop.run_ready()
            if not self._check_conditions():
                return

    def _where(self) -> str:
        return f"workflow {self.definition.name!r} execution {self.execution_id!r} step {self.step_index}"

    def _decide(self, decision: Decision) -> Decision:
        """Record a decision; while replaying, it must match the recorded one (which we adopt)."""
        pending = self._pending
        if pending.expected is not None:
            if not pending.expected:
                err = NonDeterminismError(
                    f"{self._where()}: the code issued {describe(decision)} but history has no "
                    "further decision in this step"
                )
                pending.error = pending.error or err
                raise err
            recorded = pending.expected.popleft()
            if not same_command(recorded, decision):
                err = NonDeterminismError(
                    f"{self._where()}: history has {describe(recorded)} but the code issued {describe(decision)}"
                )
                pending.error = pending.error or err
                raise err
            decision = recorded
        pending.decisions.append(decision)
        pending.size += EVENT_OVERHEAD + _payload_bytes(decision)
        return decision

    def check_payload(self, raw: msgspec.Raw, *, what: str) -> None:
        """Raise ``PayloadTooLarge`` (at the call site in workflow code) unless ``raw`` fits in
        one message, and in this step's history message with what the step already records.
        Deterministic: a replay of the step sees the same inputs and decisions."""
        size, limit = len(raw), self.payload_limit
        limits.check_size(size, limit, what=what)
        recorded = self._pending.size
        if recorded + size + EVENT_OVERHEAD > limit:
            raise PayloadTooLarge(
                f"{what} is {size} bytes; this step already records {recorded} bytes, and one "
                f"step's history is limited to {limit} bytes: split the work over several "
                "steps (await between the calls) or pass a reference to the data",
                size=size,
                limit=limit,
            )

    def _effect(self, effect: Effect) -> None:
        self._pending.effects.append(effect)

    def _next_seq(self, kind: str) -> int:
        self._seq[kind] += 1
        return self._seq[kind]

    # ---------------------------------------------------------------------- inputs

    def _apply(self, event: InputEvent) -> bool:
        match event:
            case WorkflowStarted():
                return self._start(event)
            case ActivityCompleted():
                return self._activity_completed(event)
            case ActivityFailed():
                return self._activity_failed(event)
            case ActivityProgressed():
                return self._activity_progressed(event)
            case TimerFired():
                return self._timer_fired(event.timer)
            case SignalReceived():
                return self._signal(event)
            case CancelRequested():
                return self._cancel(event)
            case TerminateRequested():
                return self._terminate(event)
            case ChildClosed():
                return self._child_closed(event)
            case _:
                assert_never(event)

    def _start(self, event: WorkflowStarted) -> bool:
        if self._main is not None:
            return False
        self.started = event
        self._effect(UpdateIndex("RUNNING"))
        if event.timeout is not None:
            fire_at = self.loop.now + event.timeout
            self._decide(TimerStarted(timer=WORKFLOW_TIMEOUT_TIMER, fire_at=fire_at))
            self._effect(StartTimer(WORKFLOW_TIMEOUT_TIMER, fire_at))
            self._workflow_timer = True
        self._main = self.loop.create_task(self._run_main(event.input), name=f"workflow:{self.execution_id}")
        return True

    async def _run_main(self, raw_input: msgspec.Raw) -> Any:
        definition = self.definition
        args: tuple[Any, ...] = ()
        if definition.takes_input:
            args = (definition.input_codec.decode(raw_input, what=f"input of workflow {definition.name!r}"),)
        return await definition.fn(*args)

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
                self.check_payload(raw, what=what)
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
        info = _bounded(info_from_exception(exc, code="workflow.failed"))
        self._close(WorkflowFailed(error=info), "FAILED", error=info)

    def _close(
        self,
        decision: ClosingDecision,
        status: str | None,
        *,
        result: msgspec.Raw | None = None,
        error: ErrorInfo | None = None,
    ) -> None:
        self._drop_open_work()
        self.closing = self._decide(decision)  # type: ignore[assignment]
        if status is None:
            return  # continue-as-new: the actor starts the next run
        self._effect(UpdateIndex(status, result=result, error=error))  # type: ignore[arg-type]
        started = self.started
        if started is not None and started.parent:
            self._effect(
                NotifyParent(
                    started.parent, started.parent_run, started.parent_seq, status, result=result, error=error
                )
            )

    def _drop_open_work(self) -> None:
        """A closed run leaves nothing behind: timers cancelled, activities closed, children cancelled."""
        for timer_id, handle in list(self._timers.items()):
            handle._scheduled = False
            self._timers.pop(timer_id, None)
            self._decide(TimerCancelled(timer=timer_id))
            self._effect(CancelTimer(timer_id))
        if self._workflow_timer:
            self._workflow_timer = False
            self._decide(TimerCancelled(timer=WORKFLOW_TIMEOUT_TIMER))
            self._effect(CancelTimer(WORKFLOW_TIMEOUT_TIMER))
        self._close_open_activities()
        self._cancel_open_children()

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

    # ---------------------------------------------------------------------- timers

    def start_timer(self, handle: asyncio.TimerHandle) -> None:
        """Called by the loop for ``call_at``: every asyncio timer in workflow code is durable."""
        timer_id = f"t.{self._next_seq('timer')}"
        decision = self._decide(TimerStarted(timer=timer_id, fire_at=handle.when()))
        assert isinstance(decision, TimerStarted)
        self._timers[timer_id] = handle
        self._timer_ids[id(handle)] = timer_id
        self._effect(StartTimer(timer_id, decision.fire_at))

    def cancel_timer(self, handle: asyncio.TimerHandle) -> None:
        timer_id = self._timer_ids.pop(id(handle), None)
        if timer_id is None or self._timers.pop(timer_id, None) is None or self.closed:
            return
        self._decide(TimerCancelled(timer=timer_id))
        self._effect(CancelTimer(timer_id))

    def _timer_fired(self, timer: str) -> bool:
        if timer.startswith("t."):
            handle = self._timers.pop(timer, None)
            if handle is None:
                return False
            self._timer_ids.pop(id(handle), None)
            self.loop.fire(handle)
            return True
        if timer == WORKFLOW_TIMEOUT_TIMER:
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
        return self._activity_timer_fired(timer)

    # --------------------------------------------------------------------- signals

    def _signal(self, event: SignalReceived) -> bool:
        if event.id:
            if event.id in self._signal_ids:
                return False  # the same signal sent twice
            self._signal_ids.add(event.id)
        waiters = self._signal_waiters[event.name]
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(event.payload)
                return True
        self._signals[event.name].append(event.payload)
        return True

    async def wait_signal(self, name: str) -> msgspec.Raw:
        """The next signal ``name``; signals that arrived before anyone waited are kept in order."""
        buffered = self._signals[name]
        if buffered:
            return buffered.popleft()
        waiter: asyncio.Future[msgspec.Raw] = self.loop.create_future()
        self._signal_waiters[name].append(waiter)
        return await waiter

    def pending_signals(self, name: str) -> int:
        return len(self._signals[name])

    # ------------------------------------------------------------------ conditions

    async def condition(self, predicate: Callable[[], bool]) -> bool:
        if predicate():
            return True
        waiter: asyncio.Future[bool] = self.loop.create_future()
        self._conditions.append((predicate, waiter))
        return await waiter

    def _check_conditions(self) -> bool:
        """Resolve conditions whose predicate became true; True if any code became ready."""
        progressed = False
        remaining = []
        for predicate, waiter in self._conditions:
            if waiter.done():
                continue
            if predicate():
                waiter.set_result(True)
                progressed = True
            else:
                remaining.append((predicate, waiter))
        self._conditions = remaining
        return progressed

    # --------------------------------------------------------------------- patches

    def patched(self, patch: str) -> bool:
        """True when this execution takes the new branch of ``patch`` (see ``workflow.patched``)."""
        if patch in self._patches:
            return self._patches[patch]
        expected = self._pending.expected
        if expected is not None and not (
            expected and isinstance(expected[0], PatchMarked) and expected[0].patch == patch
        ):
            taken = False  # replaying history recorded before the patch existed: the old path
        else:
            self._decide(PatchMarked(patch=patch))
            taken = True
        self._patches[patch] = taken
        return taken

    # --------------------------------------------------------------- authoring API

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self.random.getrandbits(128), version=4)

    def continue_as_new(self, input: msgspec.Raw) -> ContinueAsNew:
        self.check_payload(input, what=f"input of workflow {self.definition.name!r} (continue-as-new)")
        return ContinueAsNew(input)


def _payload_bytes(event: InputEvent | Decision) -> int:
    """The user payload an event carries into history (what can be large)."""
    match event:
        case WorkflowStarted() | ActivityScheduled() | ChildStarted() | WorkflowContinuedAsNew():
            return len(event.input)
        case WorkflowCompleted():
            return len(event.result)
        case ActivityCompleted() | ChildClosed():
            return len(event.result) if event.result is not None else 0
        case SignalReceived():
            return len(event.payload)
        case ActivityProgressed():
            return len(event.details)
        case WorkflowFailed() | ActivityFailed() | ActivityRetrying():
            return len(event.error.message) + len(event.error.traceback) + len(event.error.details)
        case _:
            return 0


def _bounded(info: ErrorInfo) -> ErrorInfo:
    """A failure recorded in history keeps at most ``ERROR_TEXT_LIMIT`` characters of its
    message and traceback: an exception carrying megabytes must not make the step too large."""
    if len(info.message) <= ERROR_TEXT_LIMIT and len(info.traceback) <= ERROR_TEXT_LIMIT:
        return info
    return msgspec.structs.replace(
        info,
        message=_clip(info.message),
        traceback=_clip(info.traceback),
    )


def _clip(text: str) -> str:
    if len(text) <= ERROR_TEXT_LIMIT:
        return text
    return (
        text[: ERROR_TEXT_LIMIT // 2]
        + f"\n... [{len(text) - ERROR_TEXT_LIMIT} characters cut] ...\n"
        + text[-ERROR_TEXT_LIMIT // 2 :]
    )


def describe(event: Any) -> str:
    fields = []
    for name in ("seq", "timer", "name", "workflow", "patch", "attempt", "outcome"):
        value = getattr(event, name, None)
        if value is not None:
            fields.append(f"{name}={value!r}")
    return f"{type(event).__name__}({', '.join(fields)})"


def same_command(recorded: Decision, issued: Decision) -> bool:
    """Same kind, same sequence/timer and same name: inputs and times may legitimately differ."""
    if type(recorded) is not type(issued):
        return False
    return all(
        getattr(recorded, name, None) == getattr(issued, name, None)
        for name in ("seq", "timer", "name", "workflow", "patch", "attempt")
    )


def evict(instance: WorkflowInstance | None) -> None:
    """Tear ``instance`` down on purpose as its owner drops it (see ``WorkflowInstance.evict``)."""
    if instance is not None:
        instance.evict()
