"""Replaying the current run: rebuild a ``WorkflowInstance`` from its history steps.

Each step's inputs are applied and the code must issue the recorded decisions again (the
instance adopts the recorded ones, so nonces and times come from history). The effects each
step implies are re-derived, not stored: they go to the redo ledger, so a redelivered message
can have its step's effects performed again. A divergence stops the replay where it happened;
the caller blocks the execution with the reason. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from perdure.runtime.errors import NonDeterminismError

from .effect_runner import ExecutionRef
from .effects import StartAttempt
from .history_log import CurrentRun
from .inline_steps import StepMoved
from .instance import WorkflowInstance
from .local_activities import started_attempts
from .redo_ledger import RedoLedger

if TYPE_CHECKING:
    from .definitions import WorkflowDefinition


@dataclass(frozen=True, slots=True)
class Replayed:
    instance: WorkflowInstance
    ref: ExecutionRef
    eager: dict[int, StartAttempt]  # activity seq -> its latest eagerly started attempt
    divergence: str | None  # the NonDeterminismError's message, if the code diverged


async def replay_run(
    current: CurrentRun,
    definition: WorkflowDefinition[Any, Any],
    *,
    execution_id: str,
    partition: int,
    ledger: RedoLedger,
) -> Replayed:
    try:
        return await _replay(current, definition, execution_id, partition, ledger)
    except StepMoved:
        # A step ran past the inline slice (actors/inline_steps.py): the workflow's steps now
        # hop to a workflow thread, so the replay starts again there, with the step budget.
        return await _replay(current, definition, execution_id, partition, ledger)


async def _replay(
    current: CurrentRun,
    definition: WorkflowDefinition[Any, Any],
    execution_id: str,
    partition: int,
    ledger: RedoLedger,
) -> Replayed:
    started, steps = current.started, current.steps
    instance = WorkflowInstance(definition, execution_id, run=started.run)
    ref = ExecutionRef(execution_id, definition.name, started.run, partition, steps[0].time)
    eager: dict[int, StartAttempt] = {}

    def replay_all() -> str | None:
        """Inline, or in one workflow-thread hop (a hop per step cost more than the steps)."""
        try:
            for index, step in enumerate(steps):
                activation = instance.activate(step.inputs, step.time, expected=step.decisions)
                ledger.remember(index, step.absorbed, activation.effects)
                if step.eager:
                    eager.update(started_attempts(activation.effects, step.eager))
        except NonDeterminismError as exc:
            return str(exc)
        return None

    try:
        divergence = await instance.run_steps(replay_all)
    except BaseException:
        instance.evict()  # a half-replayed instance is dropped on purpose (a step past its budget, say)
        raise
    finally:
        instance.replaying = False
    ref.history_length = instance.history_length
    return Replayed(instance, ref, eager, divergence)
