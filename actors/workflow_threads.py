"""WorkflowThreads: workflow steps run off the runtime's event loop, under a time budget.

Steps run inline first (``inline_steps.py``); a workflow type whose step ran past the inline
slice steps here from then on, and so does every step where inline steps are not possible
(an event loop off the main thread, no free signal).

Workflow code is plain Python: a ``time.sleep(10)`` or a busy loop in it would stall the
runtime's event loop, and with it every partition, lease renewal included (measured before
this module: a 5 s ``time.sleep`` in one workflow held every other execution of its runtime
for 5 s, tests/test_step_budget.py; a block longer than ``lease_ttl`` lets the leases lapse).
So each step (``WorkflowInstance.activate``) runs in a small pool of threads while the event
loop goes on; past the budget the step fails with ``StepBudgetExceeded`` naming the workflow
and the line its code was at, and the thread is poked: an exception is raised in it
(``PyThreadState_SetAsyncExc``), which ends a busy loop at its next bytecode (a blocking
call such as ``time.sleep`` ends first, then sees it). The Temporal Python SDK does the
same (activations in a thread pool, a 2 s deadlock timeout, a poke for the stuck thread).

Why threads and not a watchdog on the event loop's own thread: the loop cannot renew leases
while workflow code holds it, and an exception cannot interrupt a blocking C call there.
The price is a thread hop per step: measured with uvloop, 14 us per step one at a time (38
instead of 24 us for a small step) and 7 us with 200 executions stepping concurrently; a
step that appends to history costs about 1 ms. ``step_budget=0`` runs steps inline, as
before. Waiting for the thread in place (the GIL released) instead of awaiting it was tried
and measured slower on a loaded 2-core machine (10,000 small steps beside a busy event loop:
764 ms, against 526 ms awaited and 371 ms inline): the loop idles while the thread waits
for a CPU.

A poke is delivered only while the step it was meant for still runs: the thread marks the
step done under a lock that the poke takes too, and clears a poke that came in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import queue
import sys
import sysconfig
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import structlog

log = structlog.get_logger("perdure.workflow")
T = TypeVar("T")

THREADS = 2  # steps are Python code under the GIL: more threads would not run them faster
DEFAULT_BUDGET = 2.0  # seconds (Settings.step_budget)
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_INTERNAL = (
    *(os.path.join(_PACKAGE, part) + os.sep for part in ("actors", "runtime", "client")),
    os.path.abspath(sysconfig.get_paths()["stdlib"]) + os.sep,
)
_LIBRARIES = tuple({os.path.abspath(sysconfig.get_paths()[name]) + os.sep for name in ("purelib", "platlib")})


class StepInterrupted(BaseException):
    """Raised inside workflow code that ran past its step budget (a ``BaseException``, so a
    plain ``except Exception`` does not swallow it). The step has already failed."""


class _Step(Generic[T]):
    def __init__(self, fn: Callable[[], T], loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.loop = loop
        self.done: asyncio.Future[T] = loop.create_future()
        self.thread: int | None = None
        self._lock = threading.Lock()
        self._running = False
        self._poked = False
        self.overran = False  # set while it runs, by the event loop, once past its budget
        self.timer: asyncio.TimerHandle | None = None  # the budget re-armed for a queued step
        self.progress: Callable[[], int] | None = None  # a job of several steps: steps begun
        self.mark = 0  # ``progress()`` when the budget was last armed

    def run(self) -> None:
        """In a pool thread: run the step, then hand the outcome to the event loop."""
        with self._lock:
            self._running, self.thread = True, threading.get_ident()
        try:
            outcome: tuple[bool, Any] = (True, self.fn())
        except BaseException as exc:  # the step's own error, or the poke
            outcome = (False, exc)
        while True:
            try:
                self._finish()
                break
            except StepInterrupted:
                continue  # the poke arrived after the step ended: nothing left to interrupt
        with contextlib.suppress(RuntimeError):  # the event loop closed meanwhile: nobody waits
            self.loop.call_soon_threadsafe(self._deliver, outcome)

    def _finish(self) -> None:
        with self._lock:
            self._running = False
            if self._poked:
                _set_async_exc(threading.get_ident(), None)  # a poke still pending: drop it

    def _deliver(self, outcome: tuple[bool, Any]) -> None:
        if self.done.done():
            return  # the step already failed for overrunning its budget
        ok, value = outcome
        if ok:
            self.done.set_result(value)
        else:
            self.done.set_exception(value)

    def overrun(self) -> bool:
        """The budget is spent: True if the step is running (it has failed), False if it
        has not started yet (queued: its budget has not begun) or has just ended."""
        with self._lock:
            if self._running:
                self.overran = True
            return self.overran

    def poke(self) -> bool:
        """Raise ``StepInterrupted`` in the thread if the step still runs there."""
        with self._lock:
            if not self._running or self.thread is None or self._poked:
                return False
            self._poked = True
            return _set_async_exc(self.thread, StepInterrupted)

    def where(self) -> str:
        """The workflow code line the thread is at now, for the error message: the innermost
        frame of the user's own code (outside Perdure, the standard library and installed
        packages), else the innermost outside Perdure and the standard library."""
        frame = sys._current_frames().get(self.thread) if self.thread is not None else None
        user = library = None
        while frame is not None:
            path = os.path.abspath(frame.f_code.co_filename)
            if not path.startswith(_INTERNAL):
                if path.startswith(_LIBRARIES):
                    library = library or frame
                else:
                    user = user or frame
            frame = frame.f_back
        found = user or library
        if found is None:
            return "an unknown line"
        return f"{found.f_code.co_filename}:{found.f_lineno} in {found.f_code.co_name}"


def _set_async_exc(thread: int, exc: type[BaseException] | None) -> bool:
    if not hasattr(ctypes, "pythonapi"):
        return False  # not CPython: a busy loop is replaced, not interrupted
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread), ctypes.py_object(exc) if exc is not None else None
    )
    return bool(done == 1)


class StepOverrun(Exception):
    """``run`` gave up on a step: it ran past ``budget`` seconds, at ``where``."""

    def __init__(self, budget: float, where: str) -> None:
        super().__init__(f"ran for more than {budget:g}s without yielding, at {where}")
        self.budget = budget
        self.where = where


class WorkflowThreads:
    """A few daemon threads that run workflow steps, one at a time each. A thread stuck in
    a step past its budget is replaced, so stuck steps never hold up the others; it leaves
    the pool when its step ends at last."""

    def __init__(self, threads: int = THREADS) -> None:
        # Seconds a step may run: set by the runtime from ``Settings.step_budget`` (the pool is
        # a process resource; a process runs one runtime, or runtimes with the same settings).
        self.budget = DEFAULT_BUDGET
        self._size = threads
        self._steps: queue.SimpleQueue[_Step[Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._stuck = 0

    async def run(
        self, fn: Callable[[], T], *, budget: float, progress: Callable[[], int] | None = None
    ) -> T:
        """Run ``fn`` in a workflow thread; past ``budget`` seconds raise ``StepOverrun``.

        ``progress``: ``fn`` runs several steps (a replay: one hop for the whole history, not
        one per step); it counts the steps begun, and the budget starts again with each, so
        a step fails once it ran for between one and two budgets."""
        loop = asyncio.get_running_loop()
        step: _Step[T] = _Step(fn, loop)
        if progress is not None:
            step.progress, step.mark = progress, progress()
        self._grow()
        self._steps.put(step)
        # One timer handle per step (cheaper than wait_for + shield: this runs for every step).
        timer = loop.call_later(budget, self._check, step, budget)
        try:
            return await step.done
        finally:
            timer.cancel()
            if step.timer is not None:
                step.timer.cancel()

    def _check(self, step: _Step[Any], budget: float) -> None:
        """On the event loop, when a step's budget is spent: fail it if it is running; one
        still queued (behind stuck steps) has not begun its budget yet."""
        if step.done.done():
            return
        if step.progress is not None and step.progress() != step.mark:
            step.mark = step.progress()  # a later step of the job: its budget begins now
            step.timer = step.loop.call_later(budget, self._check, step, budget)
            return
        if not step.overrun():
            step.timer = step.loop.call_later(budget, self._check, step, budget)
            return
        where = step.where()
        step.done.set_exception(StepOverrun(budget, where))  # its late outcome is dropped
        self._stuck_one()
        step.poke()

    def _grow(self) -> None:
        with self._lock:
            if self._threads - self._stuck >= self._size:
                return
            self._threads += 1
        threading.Thread(target=self._serve, name="perdure-workflow", daemon=True).start()

    def _stuck_one(self) -> None:
        with self._lock:
            self._stuck += 1
        self._grow()

    def _serve(self) -> None:
        stuck_before = False
        while True:
            step = self._steps.get()
            with self._lock:
                if stuck_before:
                    # The step that overran has ended: this thread is no longer stuck, and
                    # leaves if the pool has enough threads without it.
                    self._stuck -= 1
                    if self._threads - self._stuck > self._size:
                        self._threads -= 1
                        self._steps.put(step)
                        return
            step.run()
            stuck_before = step.overran


_threads = WorkflowThreads()


def workflow_threads() -> WorkflowThreads:
    """The process's workflow threads (a process resource, like the default executor)."""
    return _threads
