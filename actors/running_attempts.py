"""RunningAttempts: which activity attempts run in this runtime, so that none runs twice at once.

Shared by the eager runner (``local_activities``), the activity actors (work items) and the
effect runner (a redone step does not send a work item for an attempt running here).
"""

from __future__ import annotations

import asyncio


def attempt_id(execution_id: str, run: int, seq: int, attempt: int) -> str:
    return f"{execution_id}:{run}:{seq}:{attempt}"


class RunningAttempts:
    """The attempts running in this runtime, eager or pulled from a work subject, by attempt
    id: one attempt never runs twice at once here. A redone step can send a work item for an
    attempt that runs here eagerly; the activity actor that pulls it waits for the running
    one instead of running it again (``wait``), and runs it only if that one gave up
    without reporting (cancelled, or its outcome dropped when the partition moved)."""

    __slots__ = ("_running",)

    def __init__(self) -> None:
        self._running: dict[str, _Run] = {}

    def __contains__(self, attempt_id: str) -> bool:
        return attempt_id in self._running

    def claim(self, attempt_id: str) -> bool:
        """Mark ``attempt_id`` running here; False if it already is."""
        if attempt_id in self._running:
            return False
        self._running[attempt_id] = _Run()
        return True

    def release(self, attempt_id: str, concluded: bool = True) -> None:
        """It no longer runs here; ``concluded``: its outcome was reported (or handed over)."""
        run = self._running.pop(attempt_id, None)
        if run is not None:
            run.concluded = concluded
            run.done.set()

    async def wait(self, attempt_id: str) -> bool:
        """Until ``attempt_id`` no longer runs here; whether that run concluded it."""
        run = self._running.get(attempt_id)
        if run is None:
            return False
        await run.done.wait()
        return run.concluded


class _Run:
    __slots__ = ("concluded", "done")

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.concluded = False
