"""WorkflowInstance: one execution's workflow code, its durable state machines and its decisions.

The execution actor calls ``activate(inputs, time)`` once per step. The instance applies
each input (resolving activity futures, firing timers, cancelling), runs the replay loop
until the code blocks, and returns the inputs it accepted, the decisions it made, and the
effects those decisions imply. During replay the same call is given the recorded decisions:
a decision that differs is a ``NonDeterminismError`` naming both.

Sequence numbers are per kind (``activity``, ``timer``) and are what ties a decision to its
record in history.
"""

from __future__ import annotations

import asyncio
import collections
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, assert_never

import msgspec
import structlog

from perdure.runtime import codec
from perdure.runtime.errors import (
    ActivityCancelled,
    ErrorInfo,
    NonDeterminismError,
    from_info,
    info_from_exception,
)
from perdure.runtime.events import (
    ActivityCancelRequested,
    ActivityClosed,
    ActivityCompleted,
    ActivityFailed,
    ActivityOptions,
    ActivityRetrying,
    ActivityScheduled,
    CancelRequested,
    Decision,
    InputEvent,
    SignalReceived,
    TimerCancelled,
    TimerFired,
    TimerStarted,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)
from perdure.runtime.tokens import new_nonce

from .effects import (
    CancelTimer,
    CloseActivity,
    Effect,
    PauseAttempt,
    StartAttempt,
    StartTimer,
    UpdateIndex,
    record_timer,
    retry_timer,
)
from .replay_loop import ReplayLoop

if TYPE_CHECKING:
    from .definitions import ActivityDefinition, WorkflowDefinition

log = structlog.get_logger("perdure.workflow")


@dataclass
class ActivityState:
    instance: WorkflowInstance
    seq: int
    name: str
    input: msgspec.Raw
    options: ActivityOptions
    nonce: str
    scheduled_at: float
    future: asyncio.Future[msgspec.Raw]
    attempt: int = 1
    waiting_retry: bool = False
    closed: bool = False


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


class WorkflowInstance:
    def __init__(self, definition: WorkflowDefinition[Any, Any], execution_id: str, run: int = 1) -> None:
        self.definition = definition
        self.execution_id = execution_id
        self.run = run
        self.loop = ReplayLoop(self)
        self.random = random.Random(f"{execution_id}:{run}")
        self.replaying = False
        self.history_length = 0
        self.step_index = 0
        self.closing: WorkflowCompleted | WorkflowFailed | WorkflowCancelled | None = None
        self.activities: dict[int, ActivityState] = {}
        self._seq: dict[str, int] = collections.defaultdict(int)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._timer_ids: dict[int, str] = {}
        self._main: asyncio.Task[Any] | None = None
        self._pending = _Pending()
        self._cancel_requested = False

    # ------------------------------------------------------------------ activation

    @property
    def closed(self) -> bool:
        return self.closing is not None

    def activate(
        self, inputs: list[InputEvent], time: float, *, expected: list[Decision] | None = None
    ) -> Activation:
        """Apply ``inputs`` at workflow time ``time``, run the code until it blocks, collect decisions."""
        self.loop.now = time
        self.replaying = expected is not None
        self._pending = _Pending(expected=collections.deque(expected) if expected is not None else None)
        accepted: list[InputEvent] = []
        for event in inputs:
            if self.closed:
                break
            if self._apply(event):
                accepted.append(event)
            elif expected is not None:
                raise NonDeterminismError(
                    f"{self._where()}: history input {_describe(event)} does not apply to the current code"
                )
        self.loop.run_ready()
        self._finish_if_main_done()
        pending = self._pending
        if pending.error is not None:
            raise pending.error
        if pending.expected:
            raise NonDeterminismError(
                f"{self._where()}: history has {_describe(pending.expected[0])} but the code did not issue it"
            )
        self.step_index += 1
        self.history_length += len(accepted) + len(pending.decisions)
        return Activation(accepted, pending.decisions, pending.effects)

    def _where(self) -> str:
        return f"workflow {self.definition.name!r} execution {self.execution_id!r} step {self.step_index}"

    def _decide(self, decision: Decision) -> Decision:
        """Record a decision; while replaying, it must match the recorded one (which we adopt)."""
        pending = self._pending
        if pending.expected is not None:
            if not pending.expected:
                err = NonDeterminismError(
                    f"{self._where()}: the code issued {_describe(decision)} but history has no "
                    "further decision in this step"
                )
                pending.error = pending.error or err
                raise err
            recorded = pending.expected.popleft()
            if not _same_command(recorded, decision):
                err = NonDeterminismError(
                    f"{self._where()}: history has {_describe(recorded)} but the code issued "
                    f"{_describe(decision)}"
                )
                pending.error = pending.error or err
                raise err
            decision = recorded
        pending.decisions.append(decision)
        return decision

    def _effect(self, effect: Effect) -> None:
        self._pending.effects.append(effect)

    # ---------------------------------------------------------------------- inputs

    def _apply(self, event: InputEvent) -> bool:
        match event:
            case WorkflowStarted():
                return self._start(event)
            case ActivityCompleted():
                return self._activity_completed(event)
            case ActivityFailed():
                return self._activity_failed(event)
            case TimerFired():
                return self._timer_fired(event.timer)
            case SignalReceived():
                return False
            case CancelRequested():
                return self._cancel(event)
            case _:
                assert_never(event)

    def _start(self, event: WorkflowStarted) -> bool:
        if self._main is not None:
            return False
        self._effect(UpdateIndex("RUNNING"))
        self._main = self.loop.create_task(self._run_main(event.input), name=f"workflow:{self.execution_id}")
        return True

    async def _run_main(self, raw_input: msgspec.Raw) -> Any:
        definition = self.definition
        args: tuple[Any, ...] = ()
        if definition.takes_input:
            args = (definition.input_codec.decode(raw_input, what=f"input of workflow {definition.name!r}"),)
        return await definition.fn(*args)

    def _finish_if_main_done(self) -> None:
        main = self._main
        if main is None or not main.done() or self.closed:
            return
        if main.cancelled():
            self._close(WorkflowCancelled(reason="cancelled"), UpdateIndex("CANCELLED"))
            return
        exc = main.exception()
        if exc is None:
            try:
                raw = self.definition.result_codec.encode(
                    main.result(), what=f"result of workflow {self.definition.name!r}"
                )
            except Exception as encode_error:
                exc = encode_error
            else:
                self._close(WorkflowCompleted(result=raw), UpdateIndex("COMPLETED", result=raw))
                return
        if isinstance(exc, NonDeterminismError):
            return  # activate() raises it
        info = info_from_exception(exc, code="workflow.failed")
        self._close(WorkflowFailed(error=info), UpdateIndex("FAILED", error=info))

    def _close(
        self, decision: WorkflowCompleted | WorkflowFailed | WorkflowCancelled, index: UpdateIndex
    ) -> None:
        self._drop_open_work()
        recorded = self._decide(decision)
        self.closing = recorded  # type: ignore[assignment]
        self._effect(index)

    def _drop_open_work(self) -> None:
        """A closed execution leaves nothing behind: cancel its timers, close its activities."""
        for timer_id, handle in list(self._timers.items()):
            handle._scheduled = False
            self._timers.pop(timer_id, None)
            self._decide(TimerCancelled(timer=timer_id))
            self._effect(CancelTimer(timer_id))
        for state in self.activities.values():
            if not state.closed:
                self._close_activity(state, "cancelled")

    # ------------------------------------------------------------------ activities

    def schedule_activity(self, name: str, input: msgspec.Raw, options: ActivityOptions) -> ActivityState:
        self._seq["activity"] += 1
        seq = self._seq["activity"]
        decision = self._decide(
            ActivityScheduled(seq=seq, name=name, input=input, nonce=new_nonce(), options=options)
        )
        assert isinstance(decision, ActivityScheduled)
        state = ActivityState(
            instance=self,
            seq=seq,
            name=name,
            input=input,
            options=options,
            nonce=decision.nonce,
            scheduled_at=self.loop.now,
            future=self.loop.create_future(),
        )
        self.activities[seq] = state
        self._effect(StartAttempt(decision, self.loop.now, carry_from=None))
        return state

    def _open(self, seq: int) -> ActivityState | None:
        state = self.activities.get(seq)
        return state if state is not None and not state.closed else None

    def _activity_completed(self, event: ActivityCompleted) -> bool:
        # Any attempt's result is accepted while the activity is open: a token stays valid
        # across retries, so a slow attempt 1 may still finish the job while attempt 2 runs.
        state = self._open(event.seq)
        if state is None:
            return False
        self._close_activity(state, "completed")
        if not state.future.done():
            state.future.set_result(event.result)
        return True

    def _activity_failed(self, event: ActivityFailed) -> bool:
        state = self._open(event.seq)
        if state is None or state.waiting_retry or event.attempt != state.attempt:
            return False  # a late failure of an attempt already given up on
        self._attempt_failed(state, event.error)
        return True

    def _attempt_failed(self, state: ActivityState, error: ErrorInfo) -> None:
        policy = state.options.retry
        next_attempt = state.attempt + 1
        if policy is not None and policy.allows(next_attempt, error) and not self._past_deadline(state):
            delay = policy.delay_before(next_attempt)
            self._decide(ActivityRetrying(seq=state.seq, attempt=next_attempt, delay=delay, error=error))
            timer = retry_timer(state.seq, next_attempt)
            self._effect(PauseAttempt(state.seq, state.attempt, timer, self.loop.now + delay, state.options))
            state.attempt = next_attempt
            state.waiting_retry = True
            if delay <= 0:
                self._start_retry(state)
            return
        outcome = (
            "timed_out" if error.code.startswith("activity.timeout") or "timeout" in error.code else "failed"
        )
        self._close_activity(state, outcome)  # type: ignore[arg-type]
        if not state.future.done():
            state.future.set_exception(from_info(error))

    def _past_deadline(self, state: ActivityState) -> bool:
        s2c = state.options.schedule_to_close
        return s2c is not None and self.loop.now >= state.scheduled_at + s2c

    def _start_retry(self, state: ActivityState) -> None:
        state.waiting_retry = False
        decision = self._decide(
            ActivityScheduled(
                seq=state.seq,
                name=state.name,
                input=state.input,
                attempt=state.attempt,
                nonce=state.nonce,
                options=state.options,
            )
        )
        assert isinstance(decision, ActivityScheduled)
        self._effect(
            StartAttempt(decision, self.loop.now, carry_from=record_timer(state.seq, state.attempt - 1))
        )

    def _close_activity(self, state: ActivityState, outcome: str) -> None:
        state.closed = True
        self._decide(ActivityClosed(seq=state.seq, outcome=outcome))  # type: ignore[arg-type]
        self._effect(
            CloseActivity(
                state.seq, state.attempt, state.nonce, state.options, cancelled=outcome == "cancelled"
            )
        )

    def cancel_activity(self, state: ActivityState) -> None:
        """The awaiting code was cancelled: the activity is abandoned; its heartbeats say so."""
        if state.closed or self.closed:
            return
        self._decide(ActivityCancelRequested(seq=state.seq))
        self._close_activity(state, "cancelled")
        if not state.future.done():
            state.future.set_exception(ActivityCancelled(f"activity {state.name!r} was cancelled"))
            state.future.exception()  # mark retrieved: nobody awaits it any more

    def progress_of(
        self, state: ActivityState, definition: ActivityDefinition[Any, Any]
    ) -> AsyncIterator[Any]:
        raise NotImplementedError("activity progress is not available yet")

    # ---------------------------------------------------------------------- timers

    def start_timer(self, handle: asyncio.TimerHandle) -> None:
        """Called by the loop for ``call_at``: every asyncio timer in workflow code is durable."""
        self._seq["timer"] += 1
        timer_id = f"t.{self._seq['timer']}"
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
        return self._activity_timer_fired(timer)

    def _activity_timer_fired(self, timer: str) -> bool:
        parts = timer.split(".")
        if len(parts) < 3 or parts[0] != "a":
            return False
        state = self._open(int(parts[1]))
        if state is None:
            return False
        if parts[2] == "s2c":
            seconds_ = state.options.schedule_to_close
            self._fail_without_retry(
                state, "activity.timeout", f"did not close within {seconds_}s (schedule to close)"
            )
            return True
        attempt, kind = int(parts[2]), parts[3] if len(parts) > 3 else ""
        if kind == "retry":
            if not state.waiting_retry or attempt != state.attempt:
                return False
            self._start_retry(state)
            return True
        if state.waiting_retry or attempt != state.attempt or kind not in ("to", "hb"):
            return False
        if kind == "hb":
            code, what = "activity.heartbeat_timeout", f"sent no heartbeat for {state.options.heartbeat}s"
        else:
            code, what = "activity.timeout", f"did not finish within {state.options.timeout}s"
        error = ErrorInfo(
            code=code,
            type="HeartbeatTimeout" if kind == "hb" else "ActivityTimeout",
            message=f"activity {state.name!r} (seq {state.seq}) attempt {attempt} {what}",
        )
        self._attempt_failed(state, error)
        return True

    def _fail_without_retry(self, state: ActivityState, code: str, what: str) -> None:
        error = ErrorInfo(
            code=code,
            type="ActivityTimeout",
            message=f"activity {state.name!r} (seq {state.seq}) {what}",
            retryable=False,
        )
        self._close_activity(state, "timed_out")
        if not state.future.done():
            state.future.set_exception(from_info(error))

    # ------------------------------------------------------------------ cancellation

    def _cancel(self, event: CancelRequested) -> bool:
        if self._cancel_requested or self._main is None:
            return False
        self._cancel_requested = True
        self._main.cancel(event.reason or "cancel requested")
        return True

    # --------------------------------------------------------------- authoring API

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self.random.getrandbits(128), version=4)


def _describe(event: Any) -> str:
    fields = []
    for name in ("seq", "timer", "name", "attempt", "outcome"):
        value = getattr(event, name, None)
        if value is not None:
            fields.append(f"{name}={value!r}")
    return f"{type(event).__name__}({', '.join(fields)})"


def _same_command(recorded: Decision, issued: Decision) -> bool:
    """Same kind, same sequence/timer and same name: inputs and times may legitimately differ."""
    if type(recorded) is not type(issued):
        return False
    for name in ("seq", "timer", "name", "attempt"):
        if getattr(recorded, name, None) != getattr(issued, name, None):
            return False
    return True


__all__ = ["Activation", "ActivityState", "WorkflowInstance", "codec"]
