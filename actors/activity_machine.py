"""ActivityMachine: the life of one scheduled activity inside a workflow instance.

    scheduled ──▶ attempt n running ──completed──────────────▶ closed (result)
                      │ failed / timed out (to, hb)
                      ├── retry allowed ──▶ back-off timer ──▶ attempt n+1
                      └── otherwise ─────────────────────────▶ closed (error)
    schedule-to-close timer, or the awaiting code cancelled ──▶ closed

Every transition is a recorded decision (through the instance's ``Decisions`` recorder);
the matching effects open and close the attempt's record, timers and work item.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from perdure.runtime.codec import PayloadCodec
from perdure.runtime.errors import ActivityCancelled, ErrorInfo, activity_failure, from_info
from perdure.runtime.events import (
    ActivityCancelRequested,
    ActivityCompleted,
    ActivityConcluded,
    ActivityFailed,
    ActivityObserved,
    ActivityOptions,
    ActivityProgressed,
    ActivityRetrying,
    ActivityScheduled,
)
from perdure.runtime.timer_ids import TimerId, TimerKind
from perdure.runtime.tokens import new_nonce

from .effects import CloseActivity, ObserveActivity, PauseAttempt, StartAttempt, record_timer, retry_timer

Outcome = Literal["completed", "failed", "timed_out", "cancelled"]

if TYPE_CHECKING:
    from .decisions import Decisions
    from .replay_loop import ReplayLoop


@dataclass
class ActivityState:
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
    observed: bool = False
    progress: collections.deque[msgspec.Raw] = field(default_factory=collections.deque)
    progress_waiter: asyncio.Future[None] | None = None
    result_codec: PayloadCodec | None = None  # the declared result type, to refuse bad outside results

    def wake_progress(self) -> None:
        if self.progress_waiter is not None and not self.progress_waiter.done():
            self.progress_waiter.set_result(None)


class ActivityMachine:
    """The activities a workflow instance scheduled, keyed by sequence number."""

    def __init__(self, decisions: Decisions, loop: ReplayLoop) -> None:
        self._decisions = decisions
        self._loop = loop
        self.activities: dict[int, ActivityState] = {}

    @property
    def any_open(self) -> bool:
        return any(not state.closed for state in self.activities.values())

    def schedule(self, name: str, input: msgspec.Raw, options: ActivityOptions) -> ActivityState:
        decisions = self._decisions
        decisions.check_payload(input, what=f"input of activity {name!r}")
        seq = decisions.next_seq("activity")
        decision = decisions.decide(
            ActivityScheduled(seq=seq, name=name, input=input, nonce=new_nonce(), options=options)
        )
        state = ActivityState(
            seq=seq,
            name=name,
            input=input,
            options=decision.options,  # the recorded ones: a redeploy does not change a scheduled activity's policy
            nonce=decision.nonce,
            scheduled_at=self._loop.now,
            future=self._loop.create_future(),
        )
        self.activities[seq] = state
        decisions.effect(
            StartAttempt(decision, self._loop.now, carry_from=None, observed=lambda: state.observed)
        )
        return state

    def _open(self, seq: int) -> ActivityState | None:
        state = self.activities.get(seq)
        return state if state is not None and not state.closed else None

    def completed(self, event: ActivityCompleted) -> bool:
        # Any attempt's result is accepted while the activity is open: a token stays valid
        # across retries, so a slow attempt 1 may still finish the job while attempt 2 runs.
        state = self._open(event.seq)
        if state is None:
            return False
        self._close_activity(state, "completed")
        if not state.future.done():
            state.future.set_result(event.result)
        return True

    def failed(self, event: ActivityFailed) -> bool:
        state = self._open(event.seq)
        if state is None or state.waiting_retry or event.attempt != state.attempt:
            return False  # a late failure of an attempt already given up on
        self._attempt_failed(state, event.error)
        return True

    def progressed(self, event: ActivityProgressed) -> bool:
        state = self._open(event.seq)
        if state is None or not state.observed:
            return False
        state.progress.append(event.details)
        state.wake_progress()
        return True

    def _attempt_failed(self, state: ActivityState, error: ErrorInfo) -> None:
        policy = state.options.retry
        next_attempt = state.attempt + 1
        if policy is not None and policy.allows(next_attempt, error) and not self._past_deadline(state):
            delay = policy.delay_before(next_attempt)
            self._decisions.decide(
                ActivityRetrying(seq=state.seq, attempt=next_attempt, delay=delay, error=error)
            )
            timer = retry_timer(state.seq, next_attempt)
            self._decisions.effect(
                PauseAttempt(state.seq, state.attempt, timer, self._loop.now + delay, state.options)
            )
            state.attempt = next_attempt
            state.waiting_retry = True
            if delay <= 0:
                self._start_retry(state)
            return
        outcome: Outcome = "timed_out" if "timeout" in error.code else "failed"
        self._close_activity(state, outcome)
        if not state.future.done():
            state.future.set_exception(activity_failure(error))

    def _past_deadline(self, state: ActivityState) -> bool:
        s2c = state.options.schedule_to_close
        return s2c is not None and self._loop.now >= state.scheduled_at + s2c

    def _start_retry(self, state: ActivityState) -> None:
        state.waiting_retry = False
        decision = self._decisions.decide(
            ActivityScheduled(
                seq=state.seq,
                name=state.name,
                input=state.input,
                attempt=state.attempt,
                nonce=state.nonce,
                options=state.options,
            )
        )
        self._decisions.effect(
            StartAttempt(
                decision,
                self._loop.now,
                carry_from=record_timer(state.seq, state.attempt - 1),
                observed=lambda: state.observed,
            )
        )

    def _close_activity(self, state: ActivityState, outcome: Outcome) -> None:
        state.closed = True
        state.wake_progress()
        self._decisions.decide(ActivityConcluded(seq=state.seq, outcome=outcome))
        self._decisions.effect(
            CloseActivity(
                state.seq, state.attempt, state.nonce, state.options, cancelled=outcome == "cancelled"
            )
        )

    def close_open(self) -> None:
        for state in self.activities.values():
            if not state.closed:
                self._close_activity(state, "cancelled")

    def cancel(self, state: ActivityState) -> None:
        """The awaiting code was cancelled: the activity is abandoned; its heartbeats say so."""
        if state.closed or self._decisions.closed:
            return
        self._decisions.decide(ActivityCancelRequested(seq=state.seq))
        self._close_activity(state, "cancelled")
        if not state.future.done():
            state.future.set_exception(ActivityCancelled(f"activity {state.name!r} was cancelled"))
            state.future.exception()  # mark retrieved: nobody awaits it any more

    def timer_fired(self, timer: TimerId) -> bool:
        """One of an activity's timers fired: a timeout, a heartbeat timeout, the end of a
        retry's back-off, or the schedule-to-close deadline."""
        state = self._open(timer.seq)
        if state is None:
            return False
        if timer.kind == "schedule_to_close":
            error = ErrorInfo(
                code="activity.timeout",
                type="ActivityTimeout",
                retryable=False,
                message=f"activity {state.name!r} (seq {state.seq}) did not close within "
                f"{state.options.schedule_to_close}s (schedule to close)",
            )
            self._close_activity(state, "timed_out")
            if not state.future.done():
                state.future.set_exception(from_info(error))
            return True
        if timer.kind == "retry":
            if not state.waiting_retry or timer.attempt != state.attempt:
                return False
            self._start_retry(state)
            return True
        if state.waiting_retry or timer.attempt != state.attempt or timer.kind not in _ATTEMPT_TIMERS:
            return False
        self._attempt_failed(state, attempt_timeout(state, timer.attempt, timer.kind))
        return True

    # -------------------------------------------------------------------- progress

    def observe(self, state: ActivityState) -> None:
        if state.observed or state.closed:
            return
        state.observed = True
        self._decisions.decide(ActivityObserved(seq=state.seq))
        self._decisions.effect(ObserveActivity(state.seq, state.attempt))

    async def progress_of(self, state: ActivityState) -> AsyncIterator[Any]:
        """Checkpoints in the order they were recorded; ends when the activity closes."""
        self.observe(state)
        while True:
            if state.progress:
                yield msgspec.json.decode(state.progress.popleft())
            elif state.closed:
                return
            else:
                state.progress_waiter = self._loop.create_future()
                await state.progress_waiter


# ------------------------------------------------------- timers of one attempt (issue 10)

_ATTEMPT_TIMERS = ("timeout", "heartbeat", "schedule_to_start", "liveness")


def attempt_timeout(state: ActivityState, attempt: int, kind: TimerKind) -> ErrorInfo:
    """The error of an attempt whose timer (``a.<seq>.<attempt>.<to|hb|s2s|live>``) fired:
    start to close, heartbeat, schedule to start (not retried: like Temporal, the queue had
    no room, another attempt would wait as long), liveness (the runtime running it stopped
    renewing the attempt's liveness key: it crashed or lost NATS; retried)."""
    options = state.options
    retryable = True
    if kind == "heartbeat":
        code, what = "activity.heartbeat_timeout", f"sent no heartbeat for {options.heartbeat}s"
    elif kind == "schedule_to_start":
        code, what = (
            "activity.timeout",
            f"was not started within {options.schedule_to_start}s (schedule to start)",
        )
        retryable = False
    elif kind == "liveness":
        code, what = "activity.timeout", "was lost: the runtime running it stopped (its liveness key expired)"
    else:
        code, what = "activity.timeout", f"did not finish within {options.timeout}s"
    return ErrorInfo(
        code=code,
        type="HeartbeatTimeout" if kind == "heartbeat" else "ActivityTimeout",
        message=f"activity {state.name!r} (seq {state.seq}) attempt {attempt} {what}",
        retryable=retryable,
    )
