"""Golden histories: recorded histories (``tests/golden/<generation>/*.jsonl``, written by
``tests/golden/make_golden.py`` on a real runtime) must still decode, re-encode byte for byte,
and replay against the current engine and ``tests/golden/golden_workflows.py``; the newest
generation must also be exactly what the current code decides given the same inputs.

A change of the wire format (a field renamed, reordered, given a different default, a tag
changed) fails the byte-for-byte check; a change of replay (sequence numbers, command
matching, the workflow's seeded randomness, timer ids) fails the replay checks. History
lives forever: such a change needs a migration, not a re-recording of these files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from perdure.actors.instance import WorkflowInstance
from perdure.actors.registry import Registry
from perdure.actors.replayer import read_history_file, replay_steps
from perdure.runtime import codec
from perdure.runtime.events import ActivityScheduled, PatchMarked, WorkflowStarted

GOLDEN = Path(__file__).resolve().parent / "golden"
WORKFLOWS = GOLDEN / "golden_workflows.py"
GENERATIONS = sorted(
    (p for p in GOLDEN.iterdir() if p.is_dir() and p.name[1:].isdigit()), key=lambda p: int(p.name[1:])
)
NEWEST = GENERATIONS[-1]
HISTORIES = sorted(GOLDEN.glob("v*/*.jsonl"))
# Recorded with the code before its patch: it replays (the old branch), but running it live
# takes the new branch, by design.
BEFORE_A_PATCH = {"patched_old"}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_targets([str(WORKFLOWS)])


@pytest.mark.parametrize("generation", GENERATIONS, ids=lambda p: p.name)
def test_every_scenario_is_recorded(generation: Path) -> None:
    names = {p.stem for p in generation.glob("*.jsonl")}
    assert names >= {"activities", "timers", "signals", "parent", "parent-leaf", "continued"}, names
    assert names >= {"patched_new", "patched_old"}, names


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_history_reencodes_byte_for_byte(path: Path) -> None:
    lines = path.read_bytes().splitlines()
    assert lines, path
    for n, line in enumerate(lines, 1):
        step = codec.decode(codec.history_step, line, what=f"{path.name} line {n}")
        assert codec.encode(step) == line, f"{path.name} line {n}"


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_history_replays(path: Path, registry: Registry) -> None:
    report = replay_steps(registry, path.stem, read_history_file(path))
    assert report.ok, str(report)
    assert report.steps == len(path.read_bytes().splitlines())


@pytest.mark.parametrize(
    "path",
    [p for p in NEWEST.glob("*.jsonl") if p.stem not in BEFORE_A_PATCH],
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_running_the_recorded_inputs_live_decides_the_same(path: Path, registry: Registry) -> None:
    """Stronger than replay, which compares commands by kind and sequence: given the same
    inputs at the same times, the code decides exactly what was recorded (results, timer
    times, child ids, seeded random values), but for the nonces of new activities, which are
    random by design."""
    steps = read_history_file(path)
    started = steps[0].inputs[0]
    assert isinstance(started, WorkflowStarted)
    definition = registry.workflow(started.workflow)
    assert definition is not None
    instance = WorkflowInstance(definition, path.stem, run=started.run)
    for n, step in enumerate(steps, 1):
        activation = instance.activate(step.inputs, step.time)
        assert activation.inputs == step.inputs, f"{path.name} step {n}"
        assert _blank(activation.decisions) == _blank(step.decisions), f"{path.name} step {n}"


@pytest.mark.parametrize("generation", GENERATIONS, ids=lambda p: p.name)
def test_the_patch_took_the_branch_recorded(generation: Path) -> None:
    old = [d for s in read_history_file(generation / "patched_old.jsonl") for d in s.decisions]
    new = [d for s in read_history_file(generation / "patched_new.jsonl") for d in s.decisions]
    assert not any(isinstance(d, PatchMarked) for d in old)
    assert [d.patch for d in new if isinstance(d, PatchMarked)] == ["louder"]


def test_perdure_replay_reads_the_files() -> None:
    """The operator's path: ``perdure replay <module> --file ...`` says ok for each."""
    args = [sys.executable, "-m", "perdure.runtime.daemon", "replay", str(WORKFLOWS)]
    for path in HISTORIES:
        args += ["--file", str(path)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": ok (") == len(HISTORIES), done.stdout


def _blank(decisions: list) -> list[bytes]:
    def one(d: object) -> bytes:
        if isinstance(d, ActivityScheduled):
            d = msgspec.structs.replace(d, nonce="")
        return codec.encode(d)

    return [one(d) for d in decisions]
