"""What an activity sees: ``ActivityContext`` (ids, attempt, token, checkpoint, heartbeat) and ``make_async``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from perdure.runtime.errors import PerdureError


class ActivityGone(PerdureError):
    """Raised by ``ctx.heartbeat()`` when the execution no longer wants this attempt's result.

    ``cancel_requested`` is true when the workflow cancelled it; otherwise the activity was
    closed (it timed out, completed by another attempt, or the execution ended).
    """

    code = "activity.closed"

    def __init__(self, message: str, *, cancel_requested: bool) -> None:
        super().__init__(message)
        self.cancel_requested = cancel_requested


class AsyncCompletion:
    """Returned (via ``make_async()``) by an activity that will be finished later by its token."""

    _instance: AsyncCompletion | None = None

    def __new__(cls) -> AsyncCompletion:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "make_async()"


def make_async() -> Any:
    """End the worker's part without a result; whoever holds ``ctx.token`` completes it later."""
    return AsyncCompletion()


@dataclass(frozen=True, slots=True)
class HeartbeatStatus:
    cancel_requested: bool = False
    closed: bool = False


@dataclass
class ActivityContext:
    execution_id: str
    workflow: str
    activity: str
    activity_id: int
    attempt: int
    token: str
    checkpoint: Any
    _heartbeat: Callable[[Any], Awaitable[HeartbeatStatus]]

    async def heartbeat(self, details: Any = None) -> HeartbeatStatus:
        """Say the activity is alive (resets its heartbeat timer) and record ``details`` as the
        checkpoint a retry resumes from. Raises ``ActivityGone`` if the result is no longer wanted.

        Call it as often as you like: at most one heartbeat per 0.8 x the heartbeat timeout
        goes to the server, the latest ``details`` always (the last ones are also sent when the
        attempt fails). The status is that of the latest heartbeat sent, so a cancellation is
        noticed within about one such interval. A heartbeat that cannot reach NATS is logged,
        not raised: the heartbeat timeout is what tells a worker that really went away.
        """
        status = await self._heartbeat(details)
        if status.closed or status.cancel_requested:
            raise ActivityGone(
                f"activity {self.activity!r} (seq {self.activity_id}) attempt {self.attempt} of "
                f"{self.execution_id} is no longer wanted"
                + (" (cancel requested)" if status.cancel_requested else " (closed)"),
                cancel_requested=status.cancel_requested,
            )
        return status
