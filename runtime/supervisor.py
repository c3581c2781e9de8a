"""The Supervisor owns background tasks: every task has an owner and a way to stop.

Like a Trio nursery, a supervisor cannot be left with orphans: ``stop()`` cancels what is
still running and waits (bounded by a deadline). A task marked ``critical`` that fails
sets ``failed`` so the owner can shut down instead of limping on; any other failure is
logged with the task's name (which carries its ids) and does not take siblings down,
because one execution's bug must not stop the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("perdure.supervisor")
T = TypeVar("T")


class Supervisor:
    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self.failed = asyncio.Event()
        self.failure: BaseException | None = None
        self._stopping = False

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str, critical: bool = False) -> asyncio.Task[T]:
        if self._stopping:
            coro.close()
            raise RuntimeError(f"supervisor {self.name} is stopping; cannot start {name}")
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._on_done(t, critical))
        return task

    def _on_done(self, task: asyncio.Task[Any], critical: bool) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        log.error("task.failed", task=task.get_name(), error=repr(exc), exc_info=exc)
        if critical and self.failure is None:
            self.failure = exc
            self.failed.set()

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until every task finished by itself; False if some still run at the deadline."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._tasks:
                    await asyncio.wait(set(self._tasks))
        return not self._tasks

    async def stop(self, timeout: float = 5.0) -> None:
        """Cancel every task and wait for them, at most ``timeout`` seconds."""
        self._stopping = True
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                log.warning("task.did_not_stop", task=task.get_name())
        self._stopping = False
