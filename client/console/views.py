"""What the pages show, computed from the client's answers: human times, payloads, the timeline.

Nothing here does I/O; ``pages.py`` reads, this shapes, the templates render.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from perdure.runtime.errors import ErrorInfo
from perdure.runtime.events import (
    ActivityConcluded,
    ActivityScheduled,
    ChildClosed,
    ChildStarted,
    HistoryStep,
    WorkflowCompleted,
    WorkflowStarted,
)

from .state import pretty_json

# Fields that hold an epoch time: shown as one.
_TIME_FIELDS = frozenset({"fire_at", "time", "started_at", "closed_at"})


def as_datetime(value: datetime | float | None) -> datetime | None:
    if value is None or value == 0:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromtimestamp(value, UTC)


def human_time(value: datetime | float | None) -> str:
    """``2026-11-30 07:57:40 UTC``; milliseconds would be noise for a person."""
    moment = as_datetime(value)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"


def epoch(value: datetime | float | None) -> float:
    moment = as_datetime(value)
    return moment.timestamp() if moment else 0.0


def human_duration(seconds: float | None) -> str:
    """``850 ms``, ``4.2 s``, ``3 min 20 s``, ``2 h 5 min``, ``3 d 4 h``."""
    if seconds is None:
        return "—"
    s = abs(seconds)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    if s < 86400:
        return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"
    return f"{int(s // 86400)} d {int(s % 86400 // 3600)} h"


def relative(value: datetime | float | None, now: float | None = None) -> str:
    """``12 s ago`` or ``in 3 min 20 s`` (the page's script keeps it current)."""
    moment = as_datetime(value)
    if moment is None:
        return "—"
    delta = moment.timestamp() - (time.time() if now is None else now)
    text = human_duration(delta)
    return f"in {text}" if delta > 0 else f"{text} ago"


def error_text(error: ErrorInfo | None) -> str:
    if error is None:
        return ""
    kind = error.type or error.code
    return f"{kind}: {error.message}" if error.message else kind


@dataclass(frozen=True, slots=True)
class EventView:
    kind: str
    group: str  # workflow, activity, timer, signal, child, cancel, ...: the badge colour
    summary: str  # one line: the fields that are not payloads
    payloads: list[tuple[str, str]]  # (field, pretty JSON or text)
    decision: bool


@dataclass(frozen=True, slots=True)
class StepView:
    number: int
    time: float
    runtime: str
    events: list[EventView]


def event_view(event: Any, *, decision: bool) -> EventView:
    kind = type(event).__struct_config__.tag
    summary: list[str] = []
    payloads: list[tuple[str, str]] = []
    for name in event.__struct_fields__:
        value = getattr(event, name)
        if isinstance(value, msgspec.Raw):
            payloads.append((name, pretty_json(value)))
        elif isinstance(value, ErrorInfo):
            payloads.append((name, error_text(value) + (f"\n\n{value.traceback}" if value.traceback else "")))
        elif isinstance(value, msgspec.Struct):
            encoded = msgspec.json.encode(value)
            if encoded != b"{}":
                payloads.append((name, pretty_json(encoded)))
        elif name in _TIME_FIELDS and isinstance(value, float):
            summary.append(f"{name}={human_time(value)}")
        elif value not in (None, "", [], 0) or name in ("seq", "attempt"):
            summary.append(f"{name}={value}")
    return EventView(str(kind), _group(str(kind)), " · ".join(summary), payloads, decision)


def _group(kind: str) -> str:
    """The badge colour: failures and ends by force stand out from the ordinary flow."""
    if kind.endswith((".failed", ".terminated")):
        return "failure"
    if kind.endswith((".cancelled", ".cancel_requested")):
        return "cancel"
    return kind.split(".")[0]


def timeline(steps: list[HistoryStep]) -> list[StepView]:
    return [
        StepView(
            number=i,
            time=step.time,
            runtime=step.runtime,
            events=[event_view(e, decision=False) for e in step.inputs]
            + [event_view(e, decision=True) for e in step.decisions],
        )
        for i, step in enumerate(steps, 1)
    ]


@dataclass(slots=True)
class Relations:
    """What the history says about an execution besides its steps."""

    input: str = ""
    result: str | None = None
    parent: str | None = None
    children: list[tuple[str, str, str]] = field(default_factory=list)  # (id, workflow, status)
    activities: dict[int, ActivityScheduled] = field(default_factory=dict)  # seq -> last scheduling
    concluded: dict[int, str] = field(default_factory=dict)  # seq -> outcome


def relations(steps: list[HistoryStep]) -> Relations:
    out = Relations()
    children: dict[int, ChildStarted] = {}
    closed: dict[int, str] = {}
    for step in steps:
        for event in [*step.inputs, *step.decisions]:
            match event:
                case WorkflowStarted():
                    out.input = pretty_json(event.input)
                    out.parent = event.parent
                case WorkflowCompleted():
                    out.result = pretty_json(event.result)
                case ChildStarted():
                    children[event.seq] = event
                case ChildClosed():
                    closed[event.seq] = event.status
                case ActivityScheduled():
                    out.activities[event.seq] = event
                case ActivityConcluded():
                    out.concluded[event.seq] = event.outcome
                case _:
                    pass
    out.children = [(c.execution_id, c.workflow, closed.get(seq, "RUNNING")) for seq, c in children.items()]
    return out
