"""Run rollover: the next run of an execution (continue-as-new, or a start that reuses the id).

The new run's first step is appended after the old run's last one, its effects performed,
and only then is everything before it purged, so history stays bounded however long the
execution lives. A crash in between leaves both runs on the subject; the next load keeps the
last run only (``HistoryLog.load``) and, if the old run's last step closed it with
continue-as-new but the new run never began, begins it (``pending_continuation``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeGuard

import msgspec

from perdure.runtime import tracing
from perdure.runtime.events import WorkflowContinuedAsNew, WorkflowStarted
from perdure.runtime.messages import AnyInboxMessage, StartWorkflow

from .effect_runner import EffectRunner, ExecutionRef
from .history_log import HistoryLog
from .inbox_translation import started_event
from .instance import Activation, WorkflowInstance

# Appends a step's activation (remembering it for redo) and returns its stream sequence.
Commit = Callable[[WorkflowInstance, float, Activation], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class NewRun:
    instance: WorkflowInstance
    ref: ExecutionRef


def reuses_id(message: AnyInboxMessage, instance: WorkflowInstance | None) -> TypeGuard[StartWorkflow]:
    """A start with ``new_run`` (id reuse) of a closed execution begins its next run."""
    return isinstance(message, StartWorkflow) and message.new_run and instance is not None and instance.closed


def pending_continuation(instance: WorkflowInstance) -> msgspec.Raw | None:
    """The next run's input, if the run closed with continue-as-new."""
    closing = instance.closing
    return closing.input if isinstance(closing, WorkflowContinuedAsNew) else None


def continuation_start(previous: WorkflowStarted, input: msgspec.Raw) -> StartWorkflow:
    """The start of a continue-as-new run: the same workflow, parent and timeout, a new input."""
    return StartWorkflow(
        workflow=previous.workflow,
        input=input,
        parent=previous.parent,
        parent_run=previous.parent_run,
        parent_seq=previous.parent_seq,
        timeout=previous.timeout,
    )


async def begin_next_run(
    old: WorkflowInstance,
    start: StartWorkflow,
    *,
    partition: int,
    not_before: float,
    commit: Commit,
    history: HistoryLog,
    effects: EffectRunner,
    trace: str = "",
) -> NewRun:
    """Append the next run's first step, perform its effects, purge the older runs.
    ``trace``: the ``traceparent`` of a start that reuses the id (runtime/tracing.py)."""
    run = old.run + 1
    now = max(time.time(), not_before)
    instance = WorkflowInstance(old.definition, old.execution_id, run=run)
    ref = ExecutionRef(old.execution_id, old.definition.name, run, partition, now)
    try:
        activation = await instance.run_step([_first_event(old, start, run, trace)], now)
    except BaseException:
        instance.evict()
        raise
    first_seq = await commit(instance, now, activation)
    old.evict()  # the closed run's instance is dropped on purpose
    ref.history_length = instance.history_length
    await effects.perform(ref, activation.effects)
    await history.purge_before(first_seq)
    return NewRun(instance, ref)


def _first_event(old: WorkflowInstance, start: StartWorkflow, run: int, trace: str) -> WorkflowStarted:
    """The next run's ``WorkflowStarted``, with its trace: a start that reuses the id brings
    its own (its message's header); a continue-as-new run keeps the run's it continues."""
    started = started_event(start, run=run)
    if start.new_run:
        return tracing.with_trace(started, {tracing.TRACEPARENT: trace} if trace else None)
    return tracing.continued(started, old.started) if old.started is not None else started
