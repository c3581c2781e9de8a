"""History: the append-only record of one execution, the source of truth.

Each message on ``<ns>.history.<execution>`` is one ``HistoryStep``: the inputs the
execution actor absorbed (facts that happened *to* the workflow) and the decisions the
workflow made in response (facts the workflow *caused*). A step is one message, so it is
atomic by construction. Replaying a step means applying its inputs to the workflow code
and checking that the code makes the same decisions again.

Schema evolution rules (history lives forever): new fields get defaults; tags are
explicit strings and are never reused or renamed.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from .errors import ErrorInfo
from .rawjson import NULL


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """How a failed or timed-out activity attempt is retried. Back-off waits are durable timers.

    The defaults are Temporal's: first retry after 1 s, each wait twice the previous one, at
    most 100 x the initial interval, unlimited attempts (bounded by ``schedule_to_close`` when
    set). ``maximum_attempts=1`` means no retry; ``0`` means unlimited. An activity declared
    without a policy gets these defaults.

    ``maximum_interval`` and ``maximum_attempts`` are ``UNSET`` until ``resolved()`` fills in
    the defaults, which the workflow does when it schedules the activity, so history always
    records them in full. (Before retries were the default, they defaulted to 100 s and 1 and
    were omitted from the wire when equal; such a recorded policy decodes with them ``UNSET``
    and keeps that meaning.)
    """

    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval: float | msgspec.UnsetType = msgspec.UNSET
    maximum_attempts: int | msgspec.UnsetType = msgspec.UNSET
    non_retryable_errors: tuple[str, ...] = ()

    def resolved(self) -> RetryPolicy:
        """This policy with every default spelled out (what the workflow records)."""
        return msgspec.structs.replace(
            self,
            maximum_interval=(
                100 * self.initial_interval
                if isinstance(self.maximum_interval, msgspec.UnsetType)
                else self.maximum_interval
            ),
            maximum_attempts=0
            if isinstance(self.maximum_attempts, msgspec.UnsetType)
            else self.maximum_attempts,
        )

    def delay_before(self, attempt: int) -> float:
        """Back-off before ``attempt`` (2 is the first retry)."""
        delay = self.initial_interval * self.backoff_coefficient ** max(0, attempt - 2)
        cap = 100.0 if isinstance(self.maximum_interval, msgspec.UnsetType) else self.maximum_interval
        return min(delay, cap)

    def allows(self, next_attempt: int, error: ErrorInfo) -> bool:
        if not error.retryable or error.type in self.non_retryable_errors:
            return False
        if error.code in self.non_retryable_errors:
            return False
        limit = 1 if isinstance(self.maximum_attempts, msgspec.UnsetType) else self.maximum_attempts
        return limit == 0 or next_attempt <= limit


DEFAULT_RETRY = RetryPolicy().resolved()


class ActivityOptions(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Timeouts are seconds. ``timeout`` bounds one attempt (start to close: its timer is armed
    by the runtime that starts the attempt); ``schedule_to_start`` bounds one attempt's time
    in the queue; ``schedule_to_close`` all attempts. ``retry`` None in a recorded decision
    means no retry (histories from before retries were the default); the workflow records
    ``DEFAULT_RETRY`` when nothing is declared."""

    timeout: float | None = None
    heartbeat: float | None = None
    schedule_to_close: float | None = None
    retry: RetryPolicy | None = None
    schedule_to_start: float | None = None


class Event(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="kind"):
    """Base of every history event."""


# ----------------------------------------------------------------- inputs (facts that happened)


class WorkflowStarted(Event, frozen=True, tag="workflow.started"):
    workflow: str
    input: msgspec.Raw
    run: int = 1
    parent: str | None = None  # the parent execution, for a child workflow
    parent_run: int = 0
    parent_seq: int = 0
    timeout: float | None = None  # the whole execution (all runs)
    trace: str = ""  # the start's W3C ``traceparent`` (runtime/tracing.py), "" when not traced


class ActivityCompleted(Event, frozen=True, tag="activity.completed"):
    seq: int
    attempt: int
    result: msgspec.Raw


class ActivityFailed(Event, frozen=True, tag="activity.failed"):
    seq: int
    attempt: int
    error: ErrorInfo


class TimerFired(Event, frozen=True, tag="timer.fired"):
    """A durable timer expired. ``timer`` names it: ``t.<seq>`` (workflow timer),
    ``a.<seq>.<attempt>.to`` / ``.hb`` / ``.retry`` (activity attempt), ``a.<seq>.s2c``."""

    timer: str


class SignalReceived(Event, frozen=True, tag="signal.received"):
    name: str
    payload: msgspec.Raw
    id: str = ""


class CancelRequested(Event, frozen=True, tag="cancel.requested"):
    reason: str = ""


class TerminateRequested(Event, frozen=True, tag="terminate.requested"):
    reason: str = ""


class ChildClosed(Event, frozen=True, tag="child.closed"):
    seq: int
    status: str  # COMPLETED, FAILED, CANCELLED, TERMINATED
    result: msgspec.Raw = NULL
    error: ErrorInfo | None = None


class ActivityProgressed(Event, frozen=True, tag="activity.progressed"):
    """A heartbeat's details, recorded because the workflow observes the activity's progress."""

    seq: int
    attempt: int
    details: msgspec.Raw = NULL


# ------------------------------------------------------------ decisions (facts the workflow caused)


class ActivityScheduled(Event, frozen=True, tag="activity.scheduled"):
    seq: int
    name: str
    input: msgspec.Raw
    attempt: int = 1
    nonce: str = ""
    options: ActivityOptions = ActivityOptions()


class ActivityRetrying(Event, frozen=True, tag="activity.retrying"):
    """Attempt ``attempt - 1`` failed; ``attempt`` starts when timer ``a.<seq>.<attempt>.retry`` fires."""

    seq: int
    attempt: int
    delay: float
    error: ErrorInfo


class ActivityConcluded(Event, frozen=True, tag="activity.closed"):
    """The activity will not run again: its result, error or timeout was delivered to the workflow.

    (Named ``ActivityClosed`` until the error of that name made two classes share it; the
    tag, which is what history stores, never changed.)"""

    seq: int
    outcome: Literal["completed", "failed", "timed_out", "cancelled"]


class ActivityCancelRequested(Event, frozen=True, tag="activity.cancel_requested"):
    seq: int


class TimerStarted(Event, frozen=True, tag="timer.started"):
    timer: str
    fire_at: float


class TimerCancelled(Event, frozen=True, tag="timer.cancelled"):
    timer: str


class WorkflowCompleted(Event, frozen=True, tag="workflow.completed"):
    result: msgspec.Raw


class WorkflowFailed(Event, frozen=True, tag="workflow.failed"):
    error: ErrorInfo


class WorkflowCancelled(Event, frozen=True, tag="workflow.cancelled"):
    reason: str = ""


class WorkflowTerminated(Event, frozen=True, tag="workflow.terminated"):
    reason: str = ""


class WorkflowContinuedAsNew(Event, frozen=True, tag="workflow.continued_as_new"):
    """This run ended; the next run of the same execution starts with ``input``."""

    input: msgspec.Raw


class ChildStarted(Event, frozen=True, tag="child.started"):
    seq: int
    workflow: str
    execution_id: str
    input: msgspec.Raw


class ChildCancelRequested(Event, frozen=True, tag="child.cancel_requested"):
    seq: int


class PatchMarked(Event, frozen=True, tag="patch.marked"):
    """The code took the new branch of ``workflow.patched(patch)`` at this point."""

    patch: str


class ActivityObserved(Event, frozen=True, tag="activity.observed"):
    """The workflow started watching this activity's progress: its heartbeats are recorded."""

    seq: int


InputEvent = (
    WorkflowStarted
    | ActivityCompleted
    | ActivityFailed
    | TimerFired
    | SignalReceived
    | CancelRequested
    | TerminateRequested
    | ChildClosed
    | ActivityProgressed
)
Decision = (
    ActivityScheduled
    | ActivityRetrying
    | ActivityConcluded
    | ActivityCancelRequested
    | ActivityObserved
    | TimerStarted
    | TimerCancelled
    | ChildStarted
    | ChildCancelRequested
    | PatchMarked
    | WorkflowCompleted
    | WorkflowFailed
    | WorkflowCancelled
    | WorkflowTerminated
    | WorkflowContinuedAsNew
)
AnyEvent = InputEvent | Decision

ClosingDecision = (
    WorkflowCompleted | WorkflowFailed | WorkflowCancelled | WorkflowTerminated | WorkflowContinuedAsNew
)


class HistoryStep(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One message of history: one decision step of the execution actor.

    ``time`` is the workflow clock for the step (epoch seconds). ``absorbed`` lists the
    inbox stream sequences the step consumed, so a redelivered inbox message is recognised.
    ``runtime`` names the runtime that wrote the step (for operators; replay ignores it).
    ``eager`` lists the activities (seq) whose attempt scheduled in this step started in that
    runtime without a work item (actors/local_activities.py): if the execution is loaded
    elsewhere while such an attempt is still open, its work item is sent then.
    ``ended_blocked`` is set on the step that terminated a BLOCKED run without its code (the
    code the run was blocked with, e.g. ``workflow.unknown``): that run is closed and is never
    replayed (actors/blocked.py), since its code cannot replay it.
    """

    time: float
    inputs: list[InputEvent] = []
    decisions: list[Decision] = []
    absorbed: list[int] = []
    runtime: str = ""
    eager: list[int] = []
    ended_blocked: str = ""
