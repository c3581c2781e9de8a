"""Whether an attempt pulled from a work item is still wanted, asked from history.

A retried attempt (attempt 2 and later) or a redelivered work item can reach a worker after
the activity closed: attempt 1's late result was absorbed while attempt 2's work item, sent
when attempt 1's timeout or liveness key fired, was still queued (issue 10: "repeats", an
activity run that starts after its outcome is in history). History is the only truth that
exists before the close purges the attempt's keys, so the worker reads it just before the
activity's code runs, the same question an eager attempt asks its execution ("still wanted").
The first delivery of attempt 1 is not asked (unless its work item was sent again): nothing but its own outcome closes it, and
asking would add a read to every activity's latency.

The check and the start are not one atomic step: an outcome stored between the read and
the code's first line still makes a repeat, but that window is a read's round trip, not the
work queue's whole wait.
"""

from __future__ import annotations

import msgspec
import structlog

from perdure.runtime import codec
from perdure.runtime.errors import PerdureError
from perdure.runtime.events import (
    ActivityConcluded,
    ActivityScheduled,
    ClosingDecision,
    WorkflowStarted,
)
from perdure.runtime.messages import ActivityTask
from perdure.runtime.naming import Names
from perdure.runtime.nats_client import Connection

log = structlog.get_logger("perdure.activity")


def _closes(decision: object, seq: int) -> bool:
    """Activity ``seq`` concluded, or its whole run ended."""
    if isinstance(decision, ActivityConcluded):
        return decision.seq == seq
    return isinstance(decision, ClosingDecision)  # the run ended


RECHECK_HEADER = "Perdure-Recheck"  # on a work item sent again by a redo or an eager recovery


def needs_asking(task: ActivityTask, num_delivered: int, headers: dict[str, str] | None = None) -> bool:
    """A retry, a redelivery, or a work item sent again (a redone step, an eager attempt
    recovered after a replay): something else may have closed its activity meanwhile."""
    return task.attempt > 1 or num_delivered > 1 or bool(headers and RECHECK_HEADER in headers)


async def still_open(conn: Connection, names: Names, task: ActivityTask) -> bool:
    """True if history still wants ``task``'s attempt: its activity is not concluded, its run
    has not ended, and no later attempt replaced it. An unreadable history says yes (the
    attempt runs, as before this check: its timers and the outcome's msg-id still hold), and
    so does one that cannot be read (NATS unreachable)."""
    try:
        stored = await conn.read_subject(names.history_stream, names.history(task.execution_id))
    except PerdureError as exc:
        log.warning("activity.history_unread", error=str(exc))
        return True
    if not stored:
        return False  # no execution: nobody would take its outcome
    run = 0
    latest = 0
    seen = False
    try:
        for message in stored:
            step = codec.history_step.decode(message.data)
            if step.inputs and isinstance(step.inputs[0], WorkflowStarted):
                run = step.inputs[0].run  # runs after a continue-as-new share the subject
            if run != task.run:
                continue
            seen = True
            for decision in step.decisions:
                if isinstance(decision, ActivityScheduled) and decision.seq == task.seq:
                    latest = max(latest, decision.attempt)
                elif _closes(decision, task.seq):
                    return False
    except msgspec.DecodeError as exc:
        log.warning("activity.history_unreadable", error=str(exc))
        return True
    if not seen:
        return run < task.run  # an older run (purged, so ended); a newer one not readable yet
    return latest <= task.attempt
