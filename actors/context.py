"""What an activity sees: ``ActivityContext`` (ids, attempt, token, checkpoint, heartbeat) and ``make_async``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator
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


SYNC_HEARTBEAT_WAIT = 60.0  # seconds a sync activity's thread waits for its heartbeat's reply


@dataclass
class ActivityContext:
    execution_id: str
    workflow: str
    activity: str
    activity_id: int
    attempt: int
    _token: str
    checkpoint: Any
    _heartbeat: Callable[[Any], Awaitable[HeartbeatStatus]]
    _loop: asyncio.AbstractEventLoop | None = None  # the runtime's loop, where heartbeats are sent
    # Told when the code reads its token: an eager attempt stores its record then
    # (actors/eager_keys.py), since a token holder's heartbeats need it.
    _token_read: Callable[[], None] | None = None

    @property
    def token(self) -> str:
        """The attempt's token: whoever holds it can complete, fail or heartbeat the attempt
        (``make_async()``), from the Python client or a plain NATS request."""
        if self._token_read is not None:
            notify, self._token_read = self._token_read, None
            notify()
        return self._token

    def heartbeat(self, details: Any = None) -> Awaitable[HeartbeatStatus]:
        """``await ctx.heartbeat(details)`` in an async activity; in a sync one (run in a
        thread) plain ``ctx.heartbeat(details)`` sends it on the runtime's loop and waits for
        the reply, raising ``ActivityGone`` the same way. See ``_heartbeat_async``."""
        loop = self._loop
        if loop is None or _running_loop() is loop:
            return self._heartbeat_async(details)
        sent = asyncio.run_coroutine_threadsafe(self._heartbeat_async(details), loop)
        try:
            return _Ready(sent.result(timeout=SYNC_HEARTBEAT_WAIT))
        except TimeoutError:  # the runtime is stopping: heartbeats are best effort, never raised
            sent.cancel()
            return _Ready(HeartbeatStatus())

    async def _heartbeat_async(self, details: Any = None) -> HeartbeatStatus:
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


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None  # a sync activity's thread


class _Ready(HeartbeatStatus):
    """A sync activity's heartbeat reply: the status itself, awaitable too, so code written
    either way (``ctx.heartbeat(x)`` or ``await ctx.heartbeat(x)``) type-checks and works."""

    def __init__(self, status: HeartbeatStatus) -> None:
        object.__setattr__(self, "cancel_requested", status.cancel_requested)
        object.__setattr__(self, "closed", status.closed)

    def __await__(self) -> Generator[Any, None, HeartbeatStatus]:
        return self
        yield  # a generator that returns at once
