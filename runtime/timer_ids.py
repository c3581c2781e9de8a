"""Timer ids: what a timer is for, as a value, and its text form in history and KV keys.

A timer id names what fires: a workflow's own timer (``t.<seq>``, any ``asyncio`` timer in
workflow code), the workflow's timeout (``w.timeout``), or one of an activity's
(``a.<seq>.<attempt>.to|hb|retry|s2s|live``, ``a.<seq>.s2c``; ``a.<seq>.cp`` is its checkpoint,
data kept beside the timers). The text form is on the wire (``TimerStarted.timer``,
``TimerExpired.timer``, the timers bucket's keys) and never changes; code parses it once,
here, and works with ``TimerId`` values.
"""

from __future__ import annotations

from typing import Literal

import msgspec

TimerKind = Literal[
    "sleep",
    "workflow_timeout",
    "timeout",
    "heartbeat",
    "retry",
    "schedule_to_start",
    "liveness",
    "schedule_to_close",
    "checkpoint",
]
AttemptTimerKind = Literal["timeout", "heartbeat", "retry", "schedule_to_start", "liveness"]

# Activity timers that belong to one attempt, and their suffix in the text form.
_ATTEMPT_SUFFIX: dict[str, str] = {
    "timeout": "to",
    "heartbeat": "hb",
    "retry": "retry",
    "schedule_to_start": "s2s",
    "liveness": "live",
}
_ATTEMPT_KIND = {suffix: kind for kind, suffix in _ATTEMPT_SUFFIX.items()}
_ACTIVITY_SUFFIX: dict[str, str] = {"schedule_to_close": "s2c", "checkpoint": "cp"}
_ACTIVITY_KIND = {suffix: kind for kind, suffix in _ACTIVITY_SUFFIX.items()}


class TimerId(msgspec.Struct, frozen=True, kw_only=True):
    kind: TimerKind
    seq: int = 0  # the workflow timer's or the activity's sequence number
    attempt: int = 0  # the activity attempt, for the timers of one attempt

    # ------------------------------------------------------------------ makers

    @classmethod
    def sleep(cls, seq: int) -> TimerId:
        return cls(kind="sleep", seq=seq)

    @classmethod
    def workflow_timeout(cls) -> TimerId:
        return cls(kind="workflow_timeout")

    @classmethod
    def attempt_timer(cls, kind: AttemptTimerKind, seq: int, attempt: int) -> TimerId:
        return cls(kind=kind, seq=seq, attempt=attempt)

    @classmethod
    def schedule_to_close(cls, seq: int) -> TimerId:
        return cls(kind="schedule_to_close", seq=seq)

    @classmethod
    def checkpoint(cls, seq: int) -> TimerId:
        return cls(kind="checkpoint", seq=seq)

    # ------------------------------------------------------------- text form

    def format(self) -> str:
        match self.kind:
            case "sleep":
                return f"t.{self.seq}"
            case "workflow_timeout":
                return "w.timeout"
            case "timeout" | "heartbeat" | "retry" | "schedule_to_start" | "liveness":
                return f"a.{self.seq}.{self.attempt}.{_ATTEMPT_SUFFIX[self.kind]}"
            case "schedule_to_close" | "checkpoint":
                return f"a.{self.seq}.{_ACTIVITY_SUFFIX[self.kind]}"

    def __str__(self) -> str:
        return self.format()

    @classmethod
    def parse(cls, text: str) -> TimerId | None:
        """The id ``text`` names, or None if it is not a timer id."""
        parts = text.split(".")
        if text == "w.timeout":
            return cls(kind="workflow_timeout")
        if len(parts) == 2 and parts[0] == "t" and parts[1].isdigit():
            return cls(kind="sleep", seq=int(parts[1]))
        if len(parts) < 3 or parts[0] != "a" or not parts[1].isdigit():
            return None
        seq = int(parts[1])
        if len(parts) == 3 and parts[2] in _ACTIVITY_KIND:
            return cls(kind=_ACTIVITY_KIND[parts[2]], seq=seq)  # type: ignore[arg-type]
        if len(parts) == 4 and parts[2].isdigit() and parts[3] in _ATTEMPT_KIND:
            return cls(kind=_ATTEMPT_KIND[parts[3]], seq=seq, attempt=int(parts[2]))  # type: ignore[arg-type]
        return None

    # ------------------------------------------------------------------ facts

    @property
    def is_activity(self) -> bool:
        """One of an activity's timers (or its checkpoint)."""
        return self.kind not in ("sleep", "workflow_timeout")


def attempt_prefix(seq: int, attempt: int) -> str:
    """The text every timer id of one attempt starts with (``a.<seq>.<attempt>``)."""
    return f"a.{seq}.{attempt}"


def activity_prefix(seq: int) -> str:
    """The text every timer id of activity ``seq`` starts with (``a.<seq>``), for purging them all."""
    return f"a.{seq}"
