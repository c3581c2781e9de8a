"""Unit tests of the execution actor's parts: the pure ones need no NATS (translation, redo
ledger, eager bookkeeping, rollover helpers, queries); the history log runs against the
session's nats-server."""

from __future__ import annotations

import asyncio
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from perdure import EmbeddedServer, Settings
from perdure.actors.effects import StartAttempt, StartTimer
from perdure.actors.held_ack import HeldAck, LocalResult
from perdure.actors.history_log import HistoryLog, last_run_start
from perdure.actors.inbox_translation import STALE, Refusal, not_applied, translate
from perdure.actors.local_activities import EagerSteps, started_attempts
from perdure.actors.queries import answer_query
from perdure.actors.redo_ledger import NEW_RUN, RedoLedger
from perdure.actors.run_rollover import continuation_start
from perdure.runtime.codec import PayloadCodec
from perdure.runtime.errors import ErrorInfo, HistoryConflict
from perdure.runtime.events import (
    ActivityCompleted,
    ActivityFailed,
    ActivityProgressed,
    ActivityScheduled,
    CancelRequested,
    ChildClosed,
    HistoryStep,
    SignalReceived,
    TerminateRequested,
    TimerFired,
    WorkflowStarted,
)
from perdure.runtime.messages import (
    ActivityProgress,
    ActivityResult,
    AnyInboxMessage,
    CancelWorkflow,
    ChildResult,
    SignalWorkflow,
    StartWorkflow,
    TerminateWorkflow,
    TimerExpired,
)
from perdure.runtime.nats_client import Connection
from perdure.runtime.provision import Provisioner

RAW = msgspec.Raw(b"7")


@dataclass
class FakeActivity:
    name: str = "double"
    nonce: str = "n1"
    closed: bool = False
    result_codec: PayloadCodec | None = None


@dataclass
class FakeRun:
    run: int = 1
    activities: Mapping[int, FakeActivity] = field(default_factory=dict)


def result(**kw: Any) -> ActivityResult:
    fields: dict[str, Any] = {"run": 1, "seq": 1, "attempt": 1, "nonce": "n1", "ok": True, "result": RAW}
    return ActivityResult(**{**fields, **kw})


def t(message: AnyInboxMessage, current: FakeRun | None, *, outside: bool = False) -> Any:
    return translate(message, current, execution_id="e1", from_outside=outside)


# ------------------------------------------------------------------ inbox translation

SAMPLES: list[AnyInboxMessage] = [
    StartWorkflow(workflow="w", input=RAW),
    result(),
    TimerExpired(run=1, timer="t.1"),
    SignalWorkflow(name="go", payload=RAW, id="s1"),
    CancelWorkflow(reason="r"),
    TerminateWorkflow(reason="r"),
    ChildResult(run=1, seq=1, status="COMPLETED", result=RAW),
    ActivityProgress(run=1, seq=1, attempt=1, nonce="n1", details=RAW),
]


def test_every_inbox_message_kind_translates() -> None:
    """Every member of the union has a sample here, and each translates to an event (the
    type checker proves the match covers the union; this proves the samples do)."""
    assert {type(m) for m in SAMPLES} == set(typing.get_args(AnyInboxMessage))
    current = FakeRun(activities={1: FakeActivity()})
    expected = [
        TimerFired,
        ActivityCompleted,
        TimerFired,
        SignalReceived,
        CancelRequested,
        TerminateRequested,
        ChildClosed,
        ActivityProgressed,
    ]
    got = [t(m, None if isinstance(m, StartWorkflow) else current) for m in SAMPLES]
    assert isinstance(got[0], WorkflowStarted) and got[0].run == 1 and got[0].input == RAW
    assert [type(g) for g in got[1:]] == expected[1:]
    for message in SAMPLES:
        assert not_applied(message, "e1").code  # every kind has an answer when declined


def test_start_of_an_existing_execution_is_refused() -> None:
    refusal = t(StartWorkflow(workflow="w", input=RAW), FakeRun())
    assert isinstance(refusal, Refusal) and refusal.error.code == "execution.exists"


def test_activity_result_refusals() -> None:
    current = FakeRun(run=2, activities={1: FakeActivity()})
    old_run = t(result(run=1), current)
    assert isinstance(old_run, Refusal) and old_run.error.code == "activity.closed"
    for forged in (3, 99, 0, -1):  # a run that never was: the token is not ours (issue 10 item 7)
        assert t(result(run=forged), current).error.code == "token.invalid", forged
    assert t(result(run=2, nonce="forged"), current).error.code == "token.invalid"
    assert t(result(run=2, seq=9), current).error.code == "token.invalid"
    assert t(result(run=2), None).error.code == "activity.closed"
    failed = t(result(run=2, ok=False, error=ErrorInfo(code="activity.failed", message="x")), current)
    assert isinstance(failed, ActivityFailed) and failed.error.message == "x"
    no_error = t(result(run=2, ok=False), current)
    assert isinstance(no_error, Refusal) and no_error.error.code == "payload.invalid"


def test_outside_result_must_decode_as_declared_type() -> None:
    current = FakeRun(activities={1: FakeActivity(result_codec=PayloadCodec(int))})
    bad = t(result(result=msgspec.Raw(b'"seven"')), current, outside=True)
    assert isinstance(bad, Refusal) and bad.error.code == "payload.invalid"
    assert "double" in bad.error.message
    # From this runtime's own activity actor, the result is not checked again.
    assert isinstance(t(result(result=msgspec.Raw(b'"seven"')), current), ActivityCompleted)
    assert isinstance(t(result(), current, outside=True), ActivityCompleted)
    # Closed: that is the answer, whatever the result (issue 10 item 7).
    closed = FakeRun(activities={1: FakeActivity(closed=True, result_codec=PayloadCodec(int))})
    late = t(result(result=msgspec.Raw(b"null")), closed, outside=True)
    assert isinstance(late, Refusal) and late.error.code == "activity.closed"


def test_stale_internal_reports_are_refused_not_applied() -> None:
    current = FakeRun(run=2, activities={1: FakeActivity()})
    assert t(TimerExpired(run=1, timer="t.1"), current).error.code == STALE
    assert t(TimerExpired(run=1, timer="t.1"), None).error.code == STALE
    assert t(ChildResult(run=1, seq=1, status="COMPLETED"), current).error.code == STALE
    assert t(ActivityProgress(run=2, seq=1, attempt=1, nonce="other"), current).error.code == STALE
    assert t(ActivityProgress(run=1, seq=1, attempt=1, nonce="n1"), current).error.code == STALE
    assert isinstance(t(ActivityProgress(run=2, seq=1, attempt=1, nonce="n1"), current), ActivityProgressed)


def test_declined_activity_result_says_closed() -> None:
    assert not_applied(result(), "e1").code == "activity.closed"


# ----------------------------------------------------------------------- redo ledger


def test_redo_ledger_finds_the_absorbing_step_and_the_steps_it_covers() -> None:
    ledger = RedoLedger()
    fx = [StartTimer("t.1", 1.0)]
    ledger.remember(0, [10], [])
    ledger.remember(1, [11, 12], fx)
    ledger.remember(2, [], [])  # eager outcomes only: covered by step 1's held ack
    ledger.remember(3, [], [])
    ledger.remember(4, [13], [])
    assert ledger.step_of(12) == 1 and ledger.step_of(99) is None and ledger.step_of(0) is None
    assert ledger.covered_by(1) == [1, 2, 3]
    assert ledger.covered_by(4) == [4]
    assert ledger.effects_of(1) == fx and ledger.effects_of(42) == []
    ledger.absorbed_by_new_run(20)
    assert ledger.step_of(20) == NEW_RUN and ledger.covered_by(NEW_RUN) == []
    ledger.clear()
    assert ledger.step_of(11) is None


def test_redo_ledger_is_bounded() -> None:
    ledger = RedoLedger(kept_effects=2, kept_absorbed=3)
    for i in range(5):
        ledger.remember(i, [100 + i], [])
    assert [ledger.step_of(100 + i) for i in range(5)] == [None, None, 2, 3, 4]
    assert ledger.covered_by(2) == [2]  # step 2's effects were dropped: nothing follows it


# ------------------------------------------------------------------- eager bookkeeping


class FakeLocal:
    def __init__(self, free: int) -> None:
        self.free = free

    def may_run(self, name: str, heartbeat: float | None) -> bool:
        return self.free > 0 and heartbeat is None


def start(seq: int, *, heartbeat: float | None = None) -> StartAttempt:
    from perdure.runtime.events import ActivityOptions

    decision = ActivityScheduled(
        seq=seq, name="double", input=RAW, nonce=f"n{seq}", options=ActivityOptions(heartbeat=heartbeat)
    )
    return StartAttempt(decision, 1.0, carry_from=None)


def test_eager_steps_pick_the_attempts_that_may_run_here() -> None:
    local = FakeLocal(free=2)
    eager = EagerSteps(local, lambda coro, name: coro.close())  # type: ignore[arg-type]
    effects = [start(1), StartTimer("t", 1.0), start(2, heartbeat=5.0), start(3), start(4)]
    assert eager.eligible(effects) == [1, 3, 4]  # heartbeating attempts go the ordinary way
    assert local.free == 2  # no slot is taken before the step is appended: each start takes one
    assert EagerSteps(FakeLocal(free=0), lambda c, n: None).eligible(effects) == []  # type: ignore[arg-type]
    assert EagerSteps(None, lambda c, n: None).eligible(effects) == []
    assert started_attempts(effects, [3, 4]) == {3: effects[3], 4: effects[4]}


async def test_eager_steps_hold_chains_outcomes_under_their_first_hold() -> None:
    spawned: list[str] = []

    def spawn(coro: Any, name: str) -> None:
        spawned.append(name)
        coro.close()

    steps = EagerSteps(None, spawn)
    first = steps.hold_for([])
    assert steps.take_hold() is first and steps.take_hold() is None
    outcome = LocalResult(result(), first, "local:double", lambda: None, lambda r, d: None)
    # A step that only absorbed outcomes of one hold carries on under that hold.
    assert steps.hold_for([outcome]) is first and steps.take_hold() is None
    other = HeldAck([], [], spawn)
    mixed = steps.hold_for([outcome, LocalResult(result(), other, "l", lambda: None, lambda r, d: None)])
    assert mixed is not first and mixed is not other and steps.take_hold() is mixed


# -------------------------------------------------------------------- rollover, queries


def test_continuation_keeps_the_workflow_parent_and_timeout() -> None:
    previous = WorkflowStarted(
        workflow="w", input=RAW, run=3, parent="p", parent_run=2, parent_seq=5, timeout=9.0
    )
    start = continuation_start(previous, msgspec.Raw(b"8"))
    assert (start.workflow, start.input, start.parent, start.parent_run, start.parent_seq, start.timeout) == (
        "w",
        msgspec.Raw(b"8"),
        "p",
        2,
        5,
        9.0,
    )
    assert not start.new_run


def test_last_run_start() -> None:
    started = WorkflowStarted(workflow="w", input=RAW)
    steps = [
        HistoryStep(time=1, inputs=[started]),
        HistoryStep(time=2),
        HistoryStep(time=3, inputs=[started]),
    ]
    assert last_run_start(steps) == 2
    assert last_run_start(steps[:2]) == 0
    assert last_run_start([HistoryStep(time=1)]) == 0


class FakeInstance:
    def __init__(self) -> None:
        self.queries = {"add": lambda a, b: a + b, "boom": lambda: 1 / 0, "one": lambda x: x}


def test_answer_query() -> None:
    instance: Any = FakeInstance()
    ok = answer_query(instance, "e1", "add", msgspec.Raw(b"[2, 3]"))
    assert ok.ok and ok.result == msgspec.Raw(b"5")
    assert answer_query(instance, "e1", "one", msgspec.Raw(b'"x"')).result == msgspec.Raw(b'"x"')
    assert answer_query(instance, "e1", "nope", msgspec.Raw(b"null")).error.code == "query.unknown"  # type: ignore[union-attr]
    assert answer_query(instance, "e1", "boom", msgspec.Raw(b"null")).error.code == "query.failed"  # type: ignore[union-attr]
    assert answer_query(None, "e1", "add", msgspec.Raw(b"null")).error.code == "execution.not_found"  # type: ignore[union-attr]


# ------------------------------------------------------------------ history log (NATS)


async def test_history_log_appends_with_expected_sequence_and_keeps_the_last_run(
    nats_server: EmbeddedServer, settings: Settings
) -> None:
    conn = await Connection.connect(nats_server.url, name="history-log-test")
    try:
        await Provisioner(conn, settings).provision()
        log = HistoryLog(conn, settings.names, "e1")
        assert await log.load() is None
        run1 = WorkflowStarted(workflow="w", input=RAW, run=1)
        await log.append(HistoryStep(time=1.0, inputs=[run1]))
        await log.append(HistoryStep(time=2.0))
        stale = HistoryLog(conn, settings.names, "e1")  # another owner, that saw nothing
        with pytest.raises(HistoryConflict):
            await stale.append(HistoryStep(time=3.0))
        run2 = WorkflowStarted(workflow="w", input=RAW, run=2)
        await log.append(HistoryStep(time=4.0, inputs=[run2]))  # a new run, older not purged yet
        await log.append(HistoryStep(time=5.0))
        current = await stale.load()  # finishes the purge
        assert current is not None and current.started == run2
        assert [s.time for s in current.steps] == [4.0, 5.0]
        assert (stale.last_seq, stale.last_time) == (log.last_seq, 5.0)
        stored = await conn.read_subject(settings.names.history_stream, settings.names.history("e1"))
        assert len(stored) == 2
        await stale.append(HistoryStep(time=6.0))  # now it is the writer
        with pytest.raises(HistoryConflict):
            await log.append(HistoryStep(time=7.0))
    finally:
        await conn.close()


def test_module_sizes() -> None:
    """Each part of the actor stays a readable size."""
    import perdure.actors as actors

    root = __import__("pathlib").Path(actors.__file__).parent
    parts = (
        "execution_actor",
        "history_log",
        "inbox_translation",
        "redo_ledger",
        "run_rollover",
        "run_replay",
    )
    for name in (
        *parts,
        "step_acks",
        "step_inputs",
        "replies",
        "queries",
        "local_activities",
        "running_attempts",
    ):
        lines = (root / f"{name}.py").read_text().count("\n")
        assert lines <= 400, (name, lines)


def test_event_and_error_names_differ_and_the_tag_stays() -> None:
    """Issue 13 item 7: ``ActivityClosed`` is the error; the event is ``ActivityConcluded``,
    still stored under its old tag (history lives forever)."""
    from perdure.runtime import codec, errors, events

    event = events.ActivityConcluded(seq=3, outcome="completed")
    encoded = codec.encode(HistoryStep(time=1.0, decisions=[event]))
    assert b'"kind":"activity.closed"' in encoded
    assert codec.history_step.decode(encoded).decisions == [event]
    assert not hasattr(events, "ActivityClosed") and issubclass(errors.ActivityClosed, errors.PerdureError)


# ------------------------------------------------------------- redo: what is still due


@dataclass
class FakeState:
    attempt: int = 1
    closed: bool = False
    waiting_retry: bool = False


def test_redo_plan_redoes_each_step_once_in_order() -> None:
    ledger = RedoLedger()
    ledger.remember(0, [10], [])
    ledger.remember(1, [], [])
    ledger.remember(2, [11], [])
    duplicates, steps = ledger.plan([11, 10, 12, 0])
    assert duplicates == {10, 11} and steps == [2, 0, 1]


def test_due_again_drops_what_history_made_stale() -> None:
    from perdure.actors.effects import CloseActivity, ObserveActivity, PauseAttempt, UpdateIndex
    from perdure.actors.redo_ledger import due_again
    from perdure.runtime.events import ActivityOptions

    options = ActivityOptions()
    activities = {
        1: FakeState(closed=True),  # completed since
        2: FakeState(attempt=2),  # attempt 1 failed, attempt 2 runs
        3: FakeState(attempt=2, waiting_retry=True),  # attempt 1 failed, the retry waits
        4: FakeState(),  # open, attempt 1 runs
    }
    started = [start(1), start(2), start(4)]
    paused = [
        PauseAttempt(2, 1, "a.2.2.retry", 5.0, options),
        PauseAttempt(3, 1, "a.3.2.retry", 5.0, options),
    ]
    observed = [ObserveActivity(2, 1), ObserveActivity(4, 1)]
    others = [StartTimer("t.1", 1.0), CloseActivity(1, 1, "n1", options), UpdateIndex("RUNNING")]
    due = due_again([*started, *paused, *observed, *others], activities, index_current=False)
    assert due == [started[2], paused[1], observed[1], *others[:2]]
    assert UpdateIndex("RUNNING") in due_again(others, activities, index_current=True)
    assert due_again([start(9)], activities, index_current=True) == []  # unknown activity


def test_latest_index_step() -> None:
    from perdure.actors.effects import UpdateIndex

    ledger = RedoLedger()
    assert ledger.latest_index_step() is None
    ledger.remember(0, [1], [UpdateIndex("RUNNING")])
    ledger.remember(1, [2], [StartTimer("t", 1.0)])
    ledger.remember(2, [3], [UpdateIndex("COMPLETED")])
    ledger.remember(3, [4], [])
    assert ledger.latest_index_step() == 2


async def test_running_attempts_one_at_a_time() -> None:
    from perdure.actors.running_attempts import RunningAttempts

    running = RunningAttempts()
    assert running.claim("e:1:1:1") and not running.claim("e:1:1:1") and "e:1:1:1" in running
    waiter = asyncio.ensure_future(running.wait("e:1:1:1"))
    await asyncio.sleep(0)
    assert not waiter.done()
    running.release("e:1:1:1", concluded=False)  # gave up without reporting: a copy may run
    assert await waiter is False and running.claim("e:1:1:1")
    waiter = asyncio.ensure_future(running.wait("e:1:1:1"))
    await asyncio.sleep(0)  # (the waiter is waiting)
    running.release("e:1:1:1")
    assert await waiter is True and "e:1:1:1" not in running
    assert await running.wait("e:1:1:1") is False  # not running: nothing to wait for


async def test_an_eager_attempt_no_longer_wanted_when_its_task_runs_is_not_run() -> None:
    """Its step is appended, but by the time a busy loop runs its task the execution closed
    the activity (seen in chaos runs: attempt 2 started 10 ms after attempt 1's result closed
    it). Withdrawn: nothing runs, its slot and its share of the held ack come back. A slot is
    taken as an attempt starts; with none free, ``start`` says so and the attempt goes the
    ordinary way."""
    from perdure.actors.local_activities import LocalActivities
    from perdure.runtime.messages import ActivityRecord, ActivityTask

    ran: list[int] = []

    class FakeActor:
        async def run_local(self, task: ActivityTask, keys: object) -> None:
            ran.append(task.attempt)

    tasks: list[asyncio.Task[Any]] = []

    def spawn(coro: Any, name: str) -> asyncio.Task[Any]:
        tasks.append(asyncio.ensure_future(coro))
        return tasks[-1]

    class FakeHeartbeats:
        async def mark_started(self, token: object) -> None:
            return None

    local = LocalActivities({"double": FakeActor()}, lambda *a: None, spawn, 2, FakeHeartbeats())  # type: ignore[arg-type, dict-item]
    hold = HeldAck([], [], lambda coro, name: coro.close())

    written: list[ActivityRecord] = []

    async def put_record(record: ActivityRecord) -> asyncio.Future[Any]:
        written.append(record)
        stored: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        stored.set_result(None)
        return stored

    def task_of(attempt: int) -> ActivityTask:
        return ActivityTask(
            execution_id="e1",
            workflow="w",
            run=1,
            seq=1,
            attempt=attempt,
            name="double",
            input=RAW,
            nonce=f"n{attempt}",
            token="t",
        )

    def start(attempt: int, wanted: bool = True) -> bool:
        task = task_of(attempt)
        keys = local.keys_for(task, ActivityRecord(nonce=task.nonce), put_record, None, armed=None, bare=True)
        return local.start(task, 0, hold, keys, lambda: wanted)

    assert local.may_run("double", None) and not local.may_run("other", None)
    assert start(2, wanted=False) and start(3)
    # Both slots are taken (from the start, not from the step's decision): a third attempt
    # goes the ordinary way, and nothing of it runs here.
    assert not local.may_run("double", None) and not start(4)
    await asyncio.gather(*tasks)
    assert ran == [3]  # the withdrawn attempt 2 never ran, attempt 4 never started here
    # ... nor wrote a key; attempt 3 ended without an outcome (handed over): its record, flagged
    # started so that no recovery runs it again, is stored before its hold is acked.
    assert [(r.nonce, r.started) for r in written] == [("n3", True)]
    assert not local.is_running("e1:1:1:2") and not local.is_running("e1:1:1:4")
    assert start(5) and start(6) and not start(7)  # both slots came back, and only two
    await asyncio.gather(*tasks)
    assert hold.attempts == 0  # both shares came back: withdrawn, and made async (concluded)
