"""Runs that ended while BLOCKED, read from history without their code (actors/blocked.py).

A run terminated while BLOCKED has a last step that says ``ended_blocked``: it loads as closed
without replaying (its code cannot: not hosted, undecodable history, nondeterministic,
crashing), so messages to it are handled as for any closed execution (ignored; a new run may
start). The helpers read a history subject step by step and skip steps that do not decode.
"""

from __future__ import annotations

from typing import Any

import msgspec

from perdure.runtime import codec
from perdure.runtime.errors import UnknownWorkflow
from perdure.runtime.events import HistoryStep, WorkflowStarted, WorkflowTerminated
from perdure.runtime.nats_client import StoredMessage

from .definitions import WorkflowDefinition
from .effect_runner import ExecutionRef
from .instance import WorkflowInstance
from .registry import Registry


def closed_run(
    stored: list[StoredMessage], last: HistoryStep, execution_id: str, partition: int, registry: Registry
) -> tuple[WorkflowInstance, ExecutionRef] | None:
    """The closed instance of a run whose ``last`` step terminated it while BLOCKED, else None."""
    closing = next((d for d in last.decisions if isinstance(d, WorkflowTerminated)), None)
    if closing is None or not last.ended_blocked:
        return None
    started, started_at = last_start(stored)
    workflow = started.workflow if started is not None else ""
    run = started.run if started is not None else 1
    definition = registry.workflow(workflow) or _unhosted(workflow)
    instance = WorkflowInstance(definition, execution_id, run=run)
    instance.started, instance.decisions.closing = started, closing  # closed, never run
    return instance, ExecutionRef(execution_id, workflow, run, partition, started_at or last.time)


def absorbed_by(history: list[StoredMessage]) -> set[int]:
    """The inbox sequences that history's steps absorbed (undecodable steps skipped)."""
    out: set[int] = set()
    for stored in history:
        try:
            out.update(codec.history_step.decode(stored.data).absorbed)
        except msgspec.DecodeError:
            continue
    return out


def last_start(stored: list[StoredMessage]) -> tuple[WorkflowStarted | None, float]:
    """The current run's ``workflow.started`` and its step's time (undecodable steps skipped)."""
    for message in reversed(stored):
        try:
            step = codec.history_step.decode(message.data)
        except msgspec.DecodeError:
            continue
        if step.inputs and isinstance(step.inputs[0], WorkflowStarted):
            return step.inputs[0], step.time
    return None, 0.0


def _unhosted(name: str) -> WorkflowDefinition[Any, Any]:
    """Stands in for a workflow this runtime does not host, in a run that is closed (a new
    run of it fails at once, saying so)."""

    async def unhosted() -> None:
        raise UnknownWorkflow(f"workflow {name!r} is not hosted by this runtime")

    definition: WorkflowDefinition[Any, Any] = WorkflowDefinition(unhosted, name="unhosted")
    definition.name = name
    return definition
