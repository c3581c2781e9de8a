"""The driver of tests/test_replay_properties.py: a workflow that interprets a generated
*program* (activity calls, timers, ``wait_for`` timeouts, gathers, signals waited for,
``workflow.random()``, patches), the strategies that generate programs, and a *schedule* that
runs it step by step on ``WorkflowInstance`` in process, as an execution actor would, offering
at each step what could happen then (read from the decisions recorded so far).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import msgspec
from hypothesis import strategies as st

from perdure import ActivityError, RetryPolicy, activity, workflow
from perdure.actors.instance import WorkflowInstance
from perdure.runtime import codec
from perdure.runtime.errors import ErrorInfo
from perdure.runtime.events import (
    ActivityCompleted,
    ActivityConcluded,
    ActivityFailed,
    ActivityRetrying,
    ActivityScheduled,
    CancelRequested,
    Decision,
    HistoryStep,
    InputEvent,
    SignalReceived,
    TimerCancelled,
    TimerFired,
    TimerStarted,
    WorkflowStarted,
)

# ------------------------------------------------------------------ the program interpreter

SIGNALS = ("approve", "poke")


@activity(timeout=30, retry=RetryPolicy(initial_interval=1.0, maximum_attempts=3))
async def step(x: int) -> int:
    return x  # never runs here: the schedule decides every attempt's outcome


async def run_ops(ops: list[Any]) -> list[Any]:
    out: list[Any] = []
    for op in ops:
        kind = op[0]
        if kind == "act":
            try:
                out.append(await step(op[1]))
            except ActivityError as exc:
                out.append(exc.code)
        elif kind == "sleep":
            await asyncio.sleep(op[1])
            out.append("slept")
        elif kind == "signal":
            out.append(await workflow.wait_signal(op[1]))
        elif kind == "wait_for":
            try:
                out.append(await asyncio.wait_for(step(op[1]), timeout=op[2]))
            except TimeoutError:
                out.append("timeout")
            except ActivityError as exc:
                out.append(exc.code)
        elif kind == "random":
            out.append(workflow.random().randint(0, 999))
        elif kind == "patched":
            out.append(workflow.patched(op[1]))
        elif kind == "gather":
            out.append(await asyncio.gather(*(run_ops(branch) for branch in op[1])))
    return out


@workflow
async def program(ops: list[Any]) -> list[Any]:
    return await run_ops(ops)


def _op(kind: str, *args: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.tuples(st.just(kind), *args).map(list)


LEAF = st.one_of(
    _op("act", st.integers(0, 99)),
    _op("sleep", st.sampled_from([0.5, 5.0, 3600.0])),
    _op("signal", st.sampled_from(SIGNALS)),
    _op("wait_for", st.integers(0, 99), st.sampled_from([1.0, 30.0])),
    st.just(["random"]),
    _op("patched", st.sampled_from(["p1", "p2"])),
)
PROGRAMS = st.recursive(
    st.lists(LEAF, min_size=1, max_size=4),
    lambda inner: st.lists(
        st.one_of(LEAF, st.lists(inner, min_size=1, max_size=3).map(lambda branches: ["gather", branches])),
        min_size=1,
        max_size=4,
    ),
    max_leaves=14,
)

# ------------------------------------------------------------------------ the driver


@dataclass
class Pending:
    """What could happen to the execution now, read from its recorded decisions."""

    attempts: dict[int, tuple[int, bool]] = field(default_factory=dict)  # seq -> (attempt, awaiting retry)
    timers: set[str] = field(default_factory=set)
    closed: list[int] = field(default_factory=list)
    gone_timers: list[str] = field(default_factory=list)
    cancelled: bool = False

    def record(self, inputs: list[InputEvent], decisions: list[Decision]) -> None:
        for happened in inputs:
            if isinstance(happened, TimerFired):
                self.timers.discard(happened.timer)
                self.gone_timers.append(happened.timer)
            elif isinstance(happened, CancelRequested):
                self.cancelled = True
        for decision in decisions:
            if isinstance(decision, ActivityScheduled):
                self.attempts[decision.seq] = (decision.attempt, False)
            elif isinstance(decision, ActivityRetrying):
                self.attempts[decision.seq] = (decision.attempt, True)
            elif isinstance(decision, ActivityConcluded):
                self.attempts.pop(decision.seq, None)
                self.closed.append(decision.seq)
            elif isinstance(decision, TimerStarted):
                self.timers.add(decision.timer)
            elif isinstance(decision, TimerCancelled):
                self.timers.discard(decision.timer)
                self.gone_timers.append(decision.timer)

    def candidates(self, sent: int) -> list[InputEvent]:
        """Everything that may happen now; timer names are the wire format (events.TimerFired)."""
        out: list[InputEvent] = []
        for seq, (attempt, awaiting_retry) in sorted(self.attempts.items()):
            if awaiting_retry:
                out.append(TimerFired(timer=f"a.{seq}.{attempt}.retry"))
                continue
            out.append(ActivityCompleted(seq=seq, attempt=attempt, result=raw(seq * 100 + attempt)))
            out.append(ActivityFailed(seq=seq, attempt=attempt, error=BOOM))
            out.append(TimerFired(timer=f"a.{seq}.{attempt}.to"))
        out.extend(TimerFired(timer=t) for t in sorted(self.timers))
        out.extend(SignalReceived(name=name, payload=raw(sent), id=f"s{sent}") for name in SIGNALS)
        return out

    def stale(self) -> list[InputEvent]:
        """Events that must be refused: results of closed activities, firings of gone timers."""
        out: list[InputEvent] = [ActivityCompleted(seq=s, attempt=1, result=raw(-1)) for s in self.closed]
        out.extend(TimerFired(timer=t) for t in self.gone_timers if t.startswith("t."))
        return out


BOOM = ErrorInfo(code="activity.failed", type="Boom", message="boom", retryable=True)
START_TIME = 1_800_000_000.0


def raw(value: Any) -> msgspec.Raw:
    return msgspec.Raw(codec.encode(value))


def started(ops: list[Any]) -> WorkflowStarted:
    return WorkflowStarted(workflow="program", input=raw(ops))


def new_instance() -> WorkflowInstance:
    return WorkflowInstance(program, "prop-1")


class Schedule:
    """The choices a schedule makes at each step, drawn by Hypothesis."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def pick(self, possible: list[InputEvent]) -> list[InputEvent]:
        indexes = st.lists(st.sampled_from(range(len(possible))), min_size=1, max_size=3, unique=True)
        return [possible[i] for i in self.data.draw(indexes)]

    def stale(self, stale: list[InputEvent]) -> InputEvent | None:
        return self.data.draw(st.sampled_from(stale)) if stale and self.data.draw(st.booleans()) else None

    def cancel(self) -> bool:
        return self.data.draw(st.integers(0, 59)) == 0

    def advance(self) -> float:
        return self.data.draw(st.sampled_from([0.0, 0.25, 1.0, 7.0, 4000.0]))


class Script(Schedule):
    """A fixed schedule: at each step, the one event the script names next, a minute later."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)

    def pick(self, possible: list[InputEvent]) -> list[InputEvent]:
        want = self.script.pop(0)
        found = [e for e in possible if key(e) == want]
        assert found, (want, [key(e) for e in possible])
        return found[:1]

    def stale(self, stale: list[InputEvent]) -> InputEvent | None:
        return None

    def cancel(self) -> bool:
        return False

    def advance(self) -> float:
        return 60.0


def key(event: InputEvent) -> str:
    if isinstance(event, ActivityCompleted):
        return f"complete:{event.seq}"
    if isinstance(event, ActivityFailed):
        return f"fail:{event.seq}"
    if isinstance(event, TimerFired):
        return f"fire:{event.timer}"
    if isinstance(event, SignalReceived):
        return f"signal:{event.name}"
    return type(event).__name__


def drive(ops: list[Any], schedule: Schedule, max_steps: int = 30) -> list[HistoryStep]:
    """Run the program live under a schedule; return its history."""
    instance, pending = new_instance(), Pending()
    now, sent = START_TIME, 0
    inputs: list[InputEvent] = [started(ops)]
    steps: list[HistoryStep] = []
    while True:
        stale = pending.stale()
        activation = instance.activate(inputs, now)
        # Events of one step may also overtake each other (a completion and a failure of the
        # same attempt): only the first applies. Stale ones never do.
        assert not any(e in stale for e in activation.inputs), activation.inputs
        steps.append(recorded(now, activation.inputs, activation.decisions))
        pending.record(activation.inputs, activation.decisions)
        if instance.closed or len(steps) >= max_steps:
            instance.evict()  # dropped on purpose, as owners do (issue 10 item 8)
            return steps
        inputs = schedule.pick(pending.candidates(sent))
        sent += sum(isinstance(e, SignalReceived) for e in inputs)
        late = schedule.stale(pending.stale())
        if late is not None:
            inputs.insert(0, late)
        if not pending.cancelled and schedule.cancel():
            inputs.append(CancelRequested(reason="generated"))
        now += schedule.advance()


def recorded(time: float, inputs: list[InputEvent], decisions: list[Decision]) -> HistoryStep:
    """The step as the actor stores it: encoded at once (and decoded back). Keeping the
    activation's own lists would not do: an instance dropped later appends to them as the
    garbage collector closes its coroutines (see the xfail tests at the end)."""
    return codec.history_step.decode(codec.encode(HistoryStep(time=time, inputs=inputs, decisions=decisions)))


def replay(steps: list[HistoryStep], upto: int | None = None) -> tuple[WorkflowInstance, list[HistoryStep]]:
    """Replay ``steps[:upto]`` with their recorded decisions, then run the rest live."""
    instance = new_instance()
    out: list[HistoryStep] = []
    for i, step in enumerate(steps):
        expected = step.decisions if upto is None or i < upto else None
        activation = instance.activate(step.inputs, step.time, expected=expected)
        out.append(recorded(step.time, activation.inputs, activation.decisions))
    return instance, out


def wire(steps: list[HistoryStep]) -> list[bytes]:
    return [codec.encode(s) for s in steps]


def without_new_nonces(steps: list[HistoryStep], upto: int) -> list[HistoryStep]:
    """Blank the nonces of activities first scheduled at or after step ``upto``."""
    first_step = {}
    for i, s in enumerate(steps):
        for d in s.decisions:
            if isinstance(d, ActivityScheduled):
                first_step.setdefault(d.seq, i)

    def blank(d: Decision) -> Decision:
        if isinstance(d, ActivityScheduled) and first_step[d.seq] >= upto:
            return msgspec.structs.replace(d, nonce="")
        return d

    return [msgspec.structs.replace(s, decisions=[blank(d) for d in s.decisions]) for s in steps]
