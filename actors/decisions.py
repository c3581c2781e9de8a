"""Decisions: what one step of a workflow instance decides, shared by its state machines.

The instance and each machine (activities, children, timers) record decisions through one
``Decisions`` recorder instead of reaching into the instance: ``decide`` records a command
(while replaying it must match the one in history, by value, and the recorded one is
adopted), ``effect`` collects what the step must do after its append, ``next_seq`` numbers
commands per kind, and ``check_payload`` keeps the step's history message within the limit.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from perdure.runtime import limits
from perdure.runtime.errors import ErrorInfo, NonDeterminismError, PayloadTooLarge
from perdure.runtime.events import (
    ActivityCompleted,
    ActivityConcluded,
    ActivityFailed,
    ActivityProgressed,
    ActivityRetrying,
    ActivityScheduled,
    ChildClosed,
    ChildStarted,
    ClosingDecision,
    Decision,
    InputEvent,
    SignalReceived,
    TimerStarted,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowContinuedAsNew,
    WorkflowFailed,
    WorkflowStarted,
    WorkflowTerminated,
)

from .effects import Effect

D = TypeVar("D", bound=Decision)

EVENT_OVERHEAD = 256  # bytes of JSON around one event's payload in a history step (generous)
ERROR_TEXT_LIMIT = 32 * 1024  # characters of a failure's message and traceback kept in history


@dataclass(slots=True)
class Pending:
    """One step's decisions so far, and, while replaying, the recorded ones still to match."""

    decisions: list[Decision] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    expected: collections.deque[Decision] | None = None
    error: NonDeterminismError | None = None
    size: int = 0  # bytes of the step's history message so far (payloads, plus EVENT_OVERHEAD each)


def _torn_down() -> str:
    return "a torn-down workflow instance"


class Decisions:
    def __init__(self, where: Callable[[], str]) -> None:
        self._where = where  # names the workflow, execution and step, for errors
        self._seq: dict[str, int] = collections.defaultdict(int)
        self.pending = Pending()
        self.closing: ClosingDecision | None = None
        # The largest payload one decision may carry, and one step's payloads in all: large
        # payloads are offloaded when the step is appended (runtime/payload_seal.py), so the
        # bound is PERDURE_PAYLOAD_MAX_BYTES (runtime/limits.py), the same for every runtime.
        self.payload_limit = limits.max_payload_bytes()

    @property
    def closed(self) -> bool:
        return self.closing is not None

    def detach(self) -> None:
        """Its instance is torn down: let go of it (``where`` is one of its methods)."""
        self._where = _torn_down

    def begin(self, expected: list[Decision] | None) -> None:
        """A new step; ``expected``: the decisions history recorded for it (replay)."""
        self.pending = Pending(expected=collections.deque(expected) if expected is not None else None)

    def next_seq(self, kind: str) -> int:
        self._seq[kind] += 1
        return self._seq[kind]

    def decide(self, decision: D) -> D:
        """Record a decision; while replaying, it must match the recorded one (which we adopt)."""
        pending = self.pending
        if pending.expected is not None:
            if not pending.expected:
                err = NonDeterminismError(
                    f"{self._where()}: the code issued {describe(decision)} but history has no "
                    "further decision in this step"
                )
                pending.error = pending.error or err
                raise err
            recorded = pending.expected.popleft()
            if not same_command(recorded, decision):
                err = NonDeterminismError(
                    f"{self._where()}: history has {describe(recorded)} but the code issued {describe(decision)}"
                )
                pending.error = pending.error or err
                raise err
            decision = recorded  # type: ignore[assignment]  # same_command: the same type
        pending.decisions.append(decision)
        pending.size += EVENT_OVERHEAD + payload_bytes(decision)
        return decision

    def close(self, decision: ClosingDecision) -> None:
        self.closing = self.decide(decision)

    def effect(self, effect: Effect) -> None:
        self.pending.effects.append(effect)

    def absorbed(self, event: InputEvent) -> None:
        """An input the step took in: it is in the step's history message too."""
        self.pending.size += EVENT_OVERHEAD + payload_bytes(event)

    def check_payload(self, raw: msgspec.Raw, *, what: str) -> None:
        """Raise ``PayloadTooLarge`` (at the call site in workflow code) unless ``raw`` fits in
        one message, and in this step's history message with what the step already records.
        Deterministic: a replay of the step sees the same inputs and decisions."""
        size, limit = len(raw), self.payload_limit
        limits.check_size(size, limit, what=what)
        recorded = self.pending.size
        if recorded + size + EVENT_OVERHEAD > limit:
            raise PayloadTooLarge(
                f"{what} is {size} bytes; this step already records {recorded} bytes, and one "
                f"step's history is limited to {limit} bytes: split the work over several "
                "steps (await between the calls) or pass a reference to the data",
                size=size,
                limit=limit,
            )


# The field holding the user payload an event carries into history, by event type (a dict
# lookup: this runs for every event of every step, replays included).
_PAYLOAD_FIELD: dict[type, str] = {
    WorkflowStarted: "input",
    ActivityScheduled: "input",
    ChildStarted: "input",
    WorkflowContinuedAsNew: "input",
    WorkflowCompleted: "result",
    ActivityCompleted: "result",
    ChildClosed: "result",
    SignalReceived: "payload",
    ActivityProgressed: "details",
}


_ERROR_EVENTS = (WorkflowFailed, ActivityFailed, ActivityRetrying)


def payload_bytes(event: InputEvent | Decision) -> int:
    """The user payload an event carries into history (what can be large)."""
    name = _PAYLOAD_FIELD.get(type(event))
    if name is not None:
        return len(getattr(event, name))
    if isinstance(event, _ERROR_EVENTS):
        return len(event.error.message) + len(event.error.traceback) + len(event.error.details)
    return 0


def bounded(info: ErrorInfo) -> ErrorInfo:
    """A failure recorded in history keeps at most ``ERROR_TEXT_LIMIT`` characters of its
    message and traceback: an exception carrying megabytes must not make the step too large."""
    if len(info.message) <= ERROR_TEXT_LIMIT and len(info.traceback) <= ERROR_TEXT_LIMIT:
        return info
    return msgspec.structs.replace(
        info,
        message=_clip(info.message),
        traceback=_clip(info.traceback),
    )


def _clip(text: str) -> str:
    if len(text) <= ERROR_TEXT_LIMIT:
        return text
    return (
        text[: ERROR_TEXT_LIMIT // 2]
        + f"\n... [{len(text) - ERROR_TEXT_LIMIT} characters cut] ...\n"
        + text[-ERROR_TEXT_LIMIT // 2 :]
    )


# What may legitimately differ between a recorded command and the one replayed code issues:
# inputs, results, times and random nonces. Everything else is compared, by value, so a
# field added to a command is checked unless it is listed here.
_MAY_DIFFER: dict[type[Any], tuple[str, ...]] = {
    ActivityScheduled: ("input", "nonce", "options"),
    ActivityConcluded: ("outcome",),  # how it closed follows from the inputs
    ActivityRetrying: ("delay", "error"),
    TimerStarted: ("fire_at",),
    ChildStarted: ("execution_id", "input"),
    WorkflowCompleted: ("result",),
    WorkflowFailed: ("error",),
    WorkflowCancelled: ("reason",),
    WorkflowTerminated: ("reason",),
    WorkflowContinuedAsNew: ("input",),
}


def same_command(recorded: Decision, issued: Decision) -> bool:
    """The same command: equal in every field but those that may differ (``_MAY_DIFFER``).
    Compared field by field, not by copying ``issued`` with ``recorded``'s free fields: this
    runs for every decision of every replayed step."""
    kind = type(issued)
    if type(recorded) is not kind:
        return False
    compared = _COMPARED.get(kind)
    if compared is None:
        free = _MAY_DIFFER.get(kind, ())
        compared = _COMPARED[kind] = tuple(f for f in kind.__struct_fields__ if f not in free)
    for name in compared:  # noqa: SIM110 (a loop, not all(): no generator per replayed decision)
        if getattr(issued, name) != getattr(recorded, name):
            return False
    return True


_COMPARED: dict[type[Any], tuple[str, ...]] = {}  # per decision type: the fields that must match


def describe(event: Any) -> str:
    fields = []
    for name in ("seq", "timer", "name", "workflow", "patch", "attempt", "outcome"):
        value = getattr(event, name, None)
        if value is not None:
            fields.append(f"{name}={value!r}")
    return f"{type(event).__name__}({', '.join(fields)})"
