"""Supervisor: a scope of background tasks with an owner and a lifetime (Trio's nursery shape).

Scopes nest: the runtime's scope owns one scope per partition (which owns that partition's
execution actors' tasks), the activity host's scope (which owns the attempts), and the timer
service's. Each scope has

- ``spawn()``: a task owned by the scope; on a scope that is stopping it raises
  ``ScopeClosed`` (a typed "closed", where ``RuntimeError`` used to mean it), and the
  coroutine is closed, never run;
- ``start()``: Trio's ``nursery.start``: spawn a task and wait until it says it is ready
  (it calls the ``ready`` it is given) or raise what it raised before that;
- ``wait_idle()``: wait (bounded) until the tasks finish by themselves (a graceful drain);
- ``stop()``: close, cancel every task of the scope and of its child scopes, and wait for
  them at most ``timeout`` seconds; False if some did not stop in time.

One failing child does not cancel its siblings, unlike ``asyncio.TaskGroup`` and Trio: one
execution's bug must not stop the others. Its error is logged with the task's name (which
carries its ids). A task spawned ``critical`` (an intake loop, the ownership tick) that fails
sets ``failed`` on its scope and every scope above it, so the runtime's owner (the daemon)
stops the process instead of letting it limp on. A scope is not an ``async with`` block (as
``TaskGroup`` is) because its owners (a partition host, the worker) live across callbacks,
not within one coroutine; ``stop()`` is the block's exit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import structlog

from .errors import ScopeClosed

log = structlog.get_logger("perdure.supervisor")
T = TypeVar("T")

Ready = Callable[[], None]


class Supervisor:
    def __init__(self, name: str, *, parent: Supervisor | None = None) -> None:
        self.name = name
        self._parent = parent
        self._tasks: set[asyncio.Task[Any]] = set()
        self._children: dict[Supervisor, None] = {}  # insertion-ordered set
        self._starting: dict[asyncio.Task[Any], asyncio.Future[None]] = {}
        self.failed = asyncio.Event()
        self.failure: BaseException | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _refuse(self, what: str) -> ScopeClosed:
        return ScopeClosed(f"scope {self.name} is stopping; cannot start {what}")

    # ------------------------------------------------------------------ spawning

    def child(self, name: str) -> Supervisor:
        """A scope owned by this one: stopped with it, its critical failures reported up."""
        if self._closed:
            raise self._refuse(name)
        scope = Supervisor(f"{self.name}/{name}", parent=self)
        self._children[scope] = None
        return scope

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str, critical: bool = False) -> asyncio.Task[T]:
        if self._closed:
            coro.close()
            raise self._refuse(name)
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._on_done(t, critical))
        return task

    async def start(
        self, fn: Callable[[Ready], Awaitable[Any]], *, name: str, critical: bool = False
    ) -> asyncio.Task[Any]:
        """Run ``fn(ready)`` as a task of this scope; return it once it called ``ready()``.

        What it raises before that is raised here (and is not the scope's failure: the
        caller has it); a task that returns without calling ``ready()`` counts as ready.
        If the caller is cancelled while waiting, the task is cancelled too.
        """
        ready = asyncio.get_running_loop().create_future()

        def say_ready() -> None:
            if not ready.done():
                ready.set_result(None)

        async def run() -> Any:
            return await fn(say_ready)

        task = self.spawn(run(), name=name, critical=critical)
        self._starting[task] = ready
        try:
            await ready
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            self._starting.pop(task, None)
        return task

    def _on_done(self, task: asyncio.Task[Any], critical: bool) -> None:
        self._tasks.discard(task)
        ready = self._starting.pop(task, None)
        if ready is not None and not ready.done():
            if task.cancelled():
                ready.set_exception(self._refuse(task.get_name()))
            elif task.exception() is not None:
                ready.set_exception(task.exception())  # type: ignore[arg-type]
            else:
                ready.set_result(None)
            return  # start() raises it to its caller: not this scope's failure
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        log.error("task.failed", task=task.get_name(), error=repr(exc), exc_info=exc)
        if critical:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        scope: Supervisor | None = self
        while scope is not None:
            if scope.failure is None:
                scope.failure = exc
                scope.failed.set()
            scope = scope._parent

    # ------------------------------------------------------------------- waiting

    def _all_tasks(self) -> set[asyncio.Task[Any]]:
        tasks = set(self._tasks)
        for child in self._children:
            tasks |= child._all_tasks()
        return tasks

    @property
    def running(self) -> int:
        """Tasks still running in this scope and its child scopes."""
        return len(self._all_tasks())

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until every task (child scopes' too) finished by itself; False if some still
        run at the deadline. New tasks may still be spawned meanwhile (and are waited for)."""
        try:
            async with asyncio.timeout(timeout):
                while tasks := self._all_tasks():
                    await asyncio.wait(tasks)
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout: float = 5.0) -> bool:
        """Close (spawning raises ``ScopeClosed`` from now on), cancel every task of this scope
        and its child scopes, and wait for them at most ``timeout`` seconds. True if all ended."""
        self._close()
        tasks = self._all_tasks()
        for task in tasks:
            task.cancel()
        pending: set[asyncio.Task[Any]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                log.warning("task.did_not_stop", task=task.get_name())
        if self._parent is not None and not pending:
            self._parent._children.pop(self, None)  # a stuck task keeps it listed, so it stays owned
        return not pending

    def _close(self) -> None:
        self._closed = True
        for child in self._children:
            child._close()


__all__ = ["Ready", "ScopeClosed", "Supervisor"]
