"""ActivityMachine: the life of one scheduled activity inside a workflow instance.

    scheduled ──▶ attempt n running ──completed──────────────▶ closed (result)
                      │ failed / timed out (to, hb)
                      ├── retry allowed ──▶ back-off timer ──▶ attempt n+1
                      └── otherwise ─────────────────────────▶ closed (error)
    schedule-to-close timer, or the awaiting code cancelled ──▶ closed

Every transition is a recorded decision; the matching effects open and close the attempt's
record, timers and work item.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from perdure.runtime.codec import PayloadCodec
from perdure.runtime.errors import ActivityCancelled, ErrorInfo, from_info
from perdure.runtime.events import (
    ActivityCancelRequested,
    ActivityClosed,
    ActivityCompleted,
    ActivityFailed,
    ActivityObserved,
    ActivityOptions,
    ActivityProgressed,
    ActivityRetrying,
    ActivityScheduled,
)
from perdure.runtime.tokens import new_nonce

from .effects import CloseActivity, ObserveActivity, PauseAttempt, StartAttempt, record_timer, retry_timer

if TYPE_CHECKING:
    from .instance import WorkflowInstance


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
    observed: bool = False
    progress: collections.deque[msgspec.Raw] = field(default_factory=collections.deque)
    progress_waiter: asyncio.Future[None] | None = None
    result_codec: PayloadCodec | None = None  # the declared result type, to refuse bad outside results

    def wake_progress(self) -> None:
        if self.progress_waiter is not None and not self.progress_waiter.done():
            self.progress_waiter.set_result(None)


class ActivityMachine:
    """Mixed into WorkflowInstance (which provides _decide, _effect, _next_seq, loop, activities)."""

    activities: dict[int, ActivityState]

    def schedule_activity(
        self: Any, name: str, input: msgspec.Raw, options: ActivityOptions
    ) -> ActivityState:
        self.check_payload(input, what=f"input of activity {name!r}")
        seq = self._next_seq("activity")
        decision = self._decide(
            ActivityScheduled(seq=seq, name=name, input=input, nonce=new_nonce(), options=options)
        )
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
        self._effect(StartAttempt(decision, self.loop.now, carry_from=None, observed=lambda: state.observed))
        return state

    def _open(self, seq: int) -> ActivityState | None:
        state = self.activities.get(seq)
        return state if state is not None and not state.closed else None

    def _activity_completed(self: Any, event: ActivityCompleted) -> bool:
        # Any attempt's result is accepted while the activity is open: a token stays valid
        # across retries, so a slow attempt 1 may still finish the job while attempt 2 runs.
        state = self._open(event.seq)
        if state is None:
            return False
        self._close_activity(state, "completed")
        if not state.future.done():
            state.future.set_result(event.result)
        return True

    def _activity_failed(self: Any, event: ActivityFailed) -> bool:
        state = self._open(event.seq)
        if state is None or state.waiting_retry or event.attempt != state.attempt:
            return False  # a late failure of an attempt already given up on
        self._attempt_failed(state, event.error)
        return True

    def _activity_progressed(self: Any, event: ActivityProgressed) -> bool:
        state = self._open(event.seq)
        if state is None or not state.observed:
            return False
        state.progress.append(event.details)
        state.wake_progress()
        return True

    def _attempt_failed(self: Any, state: ActivityState, error: ErrorInfo) -> None:
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
        outcome = "timed_out" if "timeout" in error.code else "failed"
        self._close_activity(state, outcome)
        if not state.future.done():
            state.future.set_exception(from_info(error))

    def _past_deadline(self: Any, state: ActivityState) -> bool:
        s2c = state.options.schedule_to_close
        return s2c is not None and self.loop.now >= state.scheduled_at + s2c

    def _start_retry(self: Any, state: ActivityState) -> None:
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
        self._effect(
            StartAttempt(
                decision,
                self.loop.now,
                carry_from=record_timer(state.seq, state.attempt - 1),
                observed=lambda: state.observed,
            )
        )

    def _close_activity(self: Any, state: ActivityState, outcome: str) -> None:
        state.closed = True
        state.wake_progress()
        self._decide(ActivityClosed(seq=state.seq, outcome=outcome))
        self._effect(
            CloseActivity(
                state.seq, state.attempt, state.nonce, state.options, cancelled=outcome == "cancelled"
            )
        )

    def _close_open_activities(self: Any) -> None:
        for state in self.activities.values():
            if not state.closed:
                self._close_activity(state, "cancelled")

    def cancel_activity(self: Any, state: ActivityState) -> None:
        """The awaiting code was cancelled: the activity is abandoned; its heartbeats say so."""
        if state.closed or self.closed:
            return
        self._decide(ActivityCancelRequested(seq=state.seq))
        self._close_activity(state, "cancelled")
        if not state.future.done():
            state.future.set_exception(ActivityCancelled(f"activity {state.name!r} was cancelled"))
            state.future.exception()  # mark retrieved: nobody awaits it any more

    def _activity_timer_fired(self: Any, timer: str) -> bool:
        parts = timer.split(".")
        if len(parts) < 3 or parts[0] != "a":
            return False
        state = self._open(int(parts[1]))
        if state is None:
            return False
        if parts[2] == "s2c":
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

    # -------------------------------------------------------------------- progress

    def observe_activity(self: Any, state: ActivityState) -> None:
        if state.observed or state.closed:
            return
        state.observed = True
        self._decide(ActivityObserved(seq=state.seq))
        self._effect(ObserveActivity(state.seq, state.attempt))

    async def progress_of(self: Any, state: ActivityState) -> AsyncIterator[Any]:
        """Checkpoints in the order they were recorded; ends when the activity closes."""
        self.observe_activity(state)
        while True:
            if state.progress:
                yield msgspec.json.decode(state.progress.popleft())
            elif state.closed:
                return
            else:
                state.progress_waiter = self.loop.create_future()
                await state.progress_waiter
