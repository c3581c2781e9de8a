"""Step failures: which ones leave an execution BLOCKED (actors/blocked.py), which come back.

A ``PerdureError`` such as ``ConnectionLost`` is transient: the step's messages come back
after a delay. What no retry can fix (``UnknownWorkflow``, ``HistoryUnreadable``, an
execution the index says is BLOCKED, workflow code past its ``StepBudgetExceeded``) blocks at once. Anything else is a crash: it blocks once
it repeats ``MAX_STEP_CRASHES`` times, counted on the deliveries of one inbox message, or in
memory as steps in a row (an eager attempt's outcome is always on its first "delivery").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from perdure.runtime.errors import (
    ErrorInfo,
    ExecutionBlocked,
    HistoryUnreadable,
    NonDeterminismError,
    PerdureError,
    StepBudgetExceeded,
    StepCrashed,
    UnknownWorkflow,
    info_from_exception,
)

# Crashes of an execution's step before it is BLOCKED: deliveries of one inbox message, or
# steps in a row in this process (an eager attempt's outcome is always on its first
# delivery). Crashes are nak'd with a 2 s delay: about 8 s of retries, enough for a transient fault.
MAX_STEP_CRASHES = 5

# No retry can fix these (a workflow that blocks its loop would block it again: issue 10 item 13).
_BLOCKING = (UnknownWorkflow, HistoryUnreadable, ExecutionBlocked, StepBudgetExceeded)


def block_reason(exc: Exception, batch: Sequence[Any], *, crashes: int) -> ErrorInfo | None:
    """Why a step that raised ``exc`` leaves its execution BLOCKED, or None: try again later
    (a ``PerdureError`` such as ``ConnectionLost`` is transient; a crash, until it repeats)."""
    if isinstance(exc, _BLOCKING):
        return exc.to_info()
    if isinstance(exc, PerdureError):
        return None
    if max([crashes, *(delivery.num_delivered for delivery in batch)]) >= MAX_STEP_CRASHES:
        return crash_reason(exc)
    return None


def divergence(message: str) -> ErrorInfo:
    """The reason of an execution whose code no longer replays its history."""
    return msgspec.structs.replace(NonDeterminismError(message).to_info(), retryable=False)


class StepFailures:
    """One execution's failed steps: logged, crashes in a row counted, judged (``block_reason``)."""

    __slots__ = ("crashes",)

    def __init__(self) -> None:
        self.crashes = 0  # reset by a step that succeeds

    def failed(self, exc: Exception, batch: Sequence[Any], log: Any) -> tuple[ErrorInfo | None, float]:
        """Why the execution is BLOCKED now (or None), and the delay before its messages come
        back otherwise (1 s after a transient ``PerdureError``, 2 s after a crash)."""
        crashed = not isinstance(exc, PerdureError)  # a PerdureError (ConnectionLost...) is transient
        if crashed:
            self.crashes += 1
            log.exception("execution.step_crashed", exc_info=exc, crashes=self.crashes)
        reason = block_reason(exc, batch, crashes=self.crashes)
        if reason is None and not crashed:
            log.warning("execution.step_failed", error=str(exc))
        return reason, 2.0 if crashed else 1.0


def crash_reason(exc: BaseException) -> ErrorInfo:
    info = info_from_exception(exc)
    return msgspec.structs.replace(
        info,
        code=StepCrashed.code,
        message=f"the step crashed {MAX_STEP_CRASHES} times: {type(exc).__name__}: {exc}",
        retryable=False,
    )
