"""Replay recorded histories against the current code, and report the first divergence.

Run it before deploying a change to workflow code: ``perdure replay myapp.workflows
--execution order-1 --execution order-2`` (or ``--file history.jsonl``, one ``HistoryStep``
JSON per line, as ``handle.history_steps()`` gives them). An incompatible change that is
not guarded by ``workflow.patched()`` is reported with the step and event where it diverges.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perdure.runtime import codec
from perdure.runtime.errors import ExecutionNotFound, NonDeterminismError
from perdure.runtime.events import HistoryStep, WorkflowStarted

from .instance import WorkflowInstance
from .registry import Registry


@dataclass(frozen=True, slots=True)
class ReplayReport:
    execution_id: str
    ok: bool
    steps: int
    divergence: str = ""
    missing: bool = False  # no such execution: nothing was replayed, nothing diverges

    def __str__(self) -> str:
        if self.ok:
            return f"{self.execution_id}: ok ({self.steps} steps replayed)"
        if self.missing:
            return f"{self.execution_id}: NOT FOUND: {self.divergence}"
        return f"{self.execution_id}: DIVERGES: {self.divergence}"


def replay_steps(registry: Registry, execution_id: str, steps: list[HistoryStep]) -> ReplayReport:
    """Replay one execution's current run (from its last ``workflow.started``)."""
    starts = [i for i, s in enumerate(steps) if s.inputs and isinstance(s.inputs[0], WorkflowStarted)]
    if not starts:
        return ReplayReport(execution_id, False, 0, "history has no workflow.started")
    steps = steps[starts[-1] :]
    started = steps[0].inputs[0]
    assert isinstance(started, WorkflowStarted)
    definition = registry.workflow(started.workflow)
    if definition is None:
        return ReplayReport(
            execution_id, False, 0, f"workflow {started.workflow!r} is not in the given modules"
        )
    instance = WorkflowInstance(definition, execution_id, run=started.run)
    try:
        for step in steps:
            instance.activate(step.inputs, step.time, expected=step.decisions)
    except NonDeterminismError as exc:
        return ReplayReport(execution_id, False, instance.step_index, str(exc))
    finally:
        instance.evict()  # an open run is dropped without running its finally blocks
    return ReplayReport(execution_id, True, len(steps))


async def replay_execution(client: Any, registry: Registry, execution_id: str) -> ReplayReport:
    """Fetch an execution's history with ``client`` and replay it."""
    steps = await client.get_handle(execution_id).history_steps()
    return replay_steps(registry, execution_id, steps)


def read_history_file(path: Path) -> list[HistoryStep]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [
        codec.decode(codec.history_step, line.encode(), what=f"{path} line {n}")
        for n, line in enumerate(lines, 1)
    ]


async def replay_command(args: argparse.Namespace) -> int:
    """``perdure replay``: exit status 0 if every history replays, 1 if any diverges, 2 if an
    execution is not found (and none diverges); a connection error is one line, status 2."""
    registry = Registry.from_targets(args.targets)
    reports: list[ReplayReport] = [
        replay_steps(registry, str(f), read_history_file(Path(f))) for f in args.file
    ]
    if args.execution:
        from perdure.client import Client
        from perdure.runtime.connect_options import ConnectOptions

        options = ConnectOptions.from_args(args)
        client = await Client.connect(args.url, namespace=args.namespace, options=options)
        try:
            for execution_id in args.execution:
                try:
                    reports.append(await replay_execution(client, registry, execution_id))
                except ExecutionNotFound as exc:
                    reports.append(ReplayReport(execution_id, False, 0, str(exc), missing=True))
        finally:
            await client.close()
    _print(reports)
    return exit_status(reports)


def exit_status(reports: list[ReplayReport]) -> int:
    """0: every history replays; 1: one diverges (do not deploy); 2: none diverges but an
    execution was not found (nothing to check: a wrong id or namespace?)."""
    if any(not r.ok and not r.missing for r in reports) or not reports:
        return 1
    return 2 if any(r.missing for r in reports) else 0


def _print(reports: Iterable[ReplayReport]) -> None:
    for report in reports:
        print(report, flush=True)
