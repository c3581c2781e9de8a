"""Side effects of a decision step, derived from its decisions; performed after the history append.

Effects are not stored: replaying a step re-derives them, so a step whose inbox message
comes back (the runtime crashed before acking it) can perform them again. Every effect is
idempotent: work items and inbox messages carry a ``Nats-Msg-Id``, KV puts are absolute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from perdure.runtime.errors import ErrorInfo
from perdure.runtime.events import ActivityOptions, ActivityScheduled, ChildStarted
from perdure.runtime.messages import Status
from perdure.runtime.timer_ids import TimerId


@dataclass(frozen=True, slots=True)
class StartAttempt:
    """Open an activity attempt: its record (heartbeat timer), timeout timers and work item."""

    decision: ActivityScheduled
    time: float
    carry_from: str | None  # the previous attempt's record, whose details become the checkpoint
    observed: Callable[[], bool] = lambda: False  # read when performed: progress() may come later in the step


@dataclass(frozen=True, slots=True)
class ObserveActivity:
    """The workflow watches progress: mark the attempt's record so heartbeats reach the inbox."""

    seq: int
    attempt: int


@dataclass(frozen=True, slots=True)
class PauseAttempt:
    """An attempt failed and a retry waits: keep its details, drop its timers, arm the back-off."""

    seq: int
    failed_attempt: int
    retry_timer: str
    fire_at: float
    options: ActivityOptions


@dataclass(frozen=True, slots=True)
class CloseActivity:
    seq: int
    attempt: int
    nonce: str
    options: ActivityOptions
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class StartTimer:
    timer: str
    fire_at: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    timer: str


@dataclass(frozen=True, slots=True)
class UpdateIndex:
    status: Status
    result: msgspec.Raw | None = None
    error: ErrorInfo | None = None


@dataclass(frozen=True, slots=True)
class StartChild:
    decision: ChildStarted
    parent_run: int


@dataclass(frozen=True, slots=True)
class CancelChild:
    execution_id: str


@dataclass(frozen=True, slots=True)
class NotifyParent:
    """A child closed: tell its parent (msg-id makes it once)."""

    parent: str
    parent_run: int
    parent_seq: int
    status: str
    result: msgspec.Raw | None = None
    error: ErrorInfo | None = None


Effect = (
    StartAttempt
    | ObserveActivity
    | PauseAttempt
    | CloseActivity
    | StartTimer
    | CancelTimer
    | UpdateIndex
    | StartChild
    | CancelChild
    | NotifyParent
)


def record_timer(seq: int, attempt: int) -> str:
    return TimerId.attempt_timer("heartbeat", seq, attempt).format()


def timeout_timer(seq: int, attempt: int) -> str:
    return TimerId.attempt_timer("timeout", seq, attempt).format()


def retry_timer(seq: int, attempt: int) -> str:
    return TimerId.attempt_timer("retry", seq, attempt).format()


def schedule_to_start_timer(seq: int, attempt: int) -> str:
    """Armed when the attempt is scheduled; the runtime that starts it cancels it."""
    return TimerId.attempt_timer("schedule_to_start", seq, attempt).format()


def liveness_timer(seq: int, attempt: int) -> str:
    """Renewed by the runtime running the attempt (actors/attempt_timers.py); expires if it dies."""
    return TimerId.attempt_timer("liveness", seq, attempt).format()


def attempt_timers(seq: int, attempt: int) -> list[str]:
    """Every timer of one attempt that may be armed in memory."""
    return [
        timeout_timer(seq, attempt),
        schedule_to_start_timer(seq, attempt),
        liveness_timer(seq, attempt),
        record_timer(seq, attempt),
    ]


CHECKPOINT_TTL = 30 * 24 * 3600.0  # outlives any attempt and back-off; then it goes by itself


def checkpoint_key(seq: int) -> str:
    """The latest heartbeat details of any attempt, kept (TTL ``CHECKPOINT_TTL``, not the
    heartbeat timeout) so a retry finds them after a timeout. Nothing deletes it: closing an
    activity costs no extra write, and the key expires on its own."""
    return TimerId.checkpoint(seq).format()


def schedule_to_close_timer(seq: int) -> str:
    return TimerId.schedule_to_close(seq).format()
