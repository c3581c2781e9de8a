"""Issue 13 item 2: timer ids are a tagged type parsed in one place, and replay compares
commands by value."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from perdure.actors.decisions import same_command
from perdure.runtime.errors import ErrorInfo
from perdure.runtime.events import (
    ActivityConcluded,
    ActivityOptions,
    ActivityRetrying,
    ActivityScheduled,
    ChildStarted,
    PatchMarked,
    TimerStarted,
    WorkflowCompleted,
)
from perdure.runtime.timer_ids import TimerId

seqs = st.integers(min_value=0, max_value=10**9)
timer_ids = st.one_of(
    seqs.map(TimerId.sleep),
    st.just(TimerId.workflow_timeout()),
    st.builds(
        TimerId.attempt_timer,
        st.sampled_from(["timeout", "heartbeat", "retry", "schedule_to_start", "liveness"]),
        seqs,
        seqs,
    ),
    seqs.map(TimerId.schedule_to_close),
    seqs.map(TimerId.checkpoint),
)


@given(timer_ids)
def test_timer_ids_round_trip(timer: TimerId) -> None:
    assert TimerId.parse(timer.format()) == timer


def test_text_forms_are_the_ones_in_history() -> None:
    assert TimerId.sleep(3).format() == "t.3"
    assert TimerId.workflow_timeout().format() == "w.timeout"
    assert TimerId.attempt_timer("heartbeat", 1, 2).format() == "a.1.2.hb"
    assert TimerId.attempt_timer("timeout", 1, 2).format() == "a.1.2.to"
    assert TimerId.attempt_timer("retry", 1, 2).format() == "a.1.2.retry"
    assert TimerId.attempt_timer("schedule_to_start", 1, 2).format() == "a.1.2.s2s"
    assert TimerId.attempt_timer("liveness", 1, 2).format() == "a.1.2.live"
    assert TimerId.schedule_to_close(4).format() == "a.4.s2c"
    assert TimerId.checkpoint(4).format() == "a.4.cp"


@given(st.text(max_size=20))
def test_anything_else_is_not_a_timer_id(text: str) -> None:
    timer = TimerId.parse(text)
    assert timer is None or timer.format() == text


def test_same_command_compares_by_value() -> None:
    raw = msgspec.Raw(b"1")
    a = ActivityScheduled(seq=1, name="a", input=raw, nonce="n1")
    # Inputs, nonces and options may differ between a recording and a replay ...
    assert same_command(a, ActivityScheduled(seq=1, name="a", input=msgspec.Raw(b"2"), nonce="n2"))
    assert same_command(a, ActivityScheduled(seq=1, name="a", input=raw, options=ActivityOptions(timeout=3)))
    # ... the command itself may not.
    assert not same_command(a, ActivityScheduled(seq=2, name="a", input=raw))
    assert not same_command(a, ActivityScheduled(seq=1, name="b", input=raw))
    assert not same_command(a, ActivityScheduled(seq=1, name="a", input=raw, attempt=2))
    assert not same_command(a, ActivityConcluded(seq=1, outcome="completed"))
    assert same_command(TimerStarted(timer="t.1", fire_at=1.0), TimerStarted(timer="t.1", fire_at=2.0))
    assert not same_command(TimerStarted(timer="t.1", fire_at=1.0), TimerStarted(timer="t.2", fire_at=1.0))
    assert same_command(
        ChildStarted(seq=1, workflow="w", execution_id="x", input=raw),
        ChildStarted(seq=1, workflow="w", execution_id="y", input=msgspec.Raw(b"3")),
    )
    assert not same_command(
        ChildStarted(seq=1, workflow="w", execution_id="x", input=raw),
        ChildStarted(seq=1, workflow="v", execution_id="x", input=raw),
    )
    error = ErrorInfo(code="c", message="m")
    assert same_command(
        ActivityRetrying(seq=1, attempt=2, delay=1.0, error=error),
        ActivityRetrying(seq=1, attempt=2, delay=2.0, error=ErrorInfo(code="d", message="n")),
    )
    assert not same_command(
        ActivityRetrying(seq=1, attempt=2, delay=1.0, error=error),
        ActivityRetrying(seq=1, attempt=3, delay=1.0, error=error),
    )
    assert same_command(PatchMarked(patch="p"), PatchMarked(patch="p"))
    assert not same_command(PatchMarked(patch="p"), PatchMarked(patch="q"))
    assert same_command(WorkflowCompleted(result=raw), WorkflowCompleted(result=msgspec.Raw(b"2")))
