"""InlineSteps: a workflow step runs on the event loop's own thread, watched; a slow one moves.

A hop to a workflow thread (``workflow_threads.py``) for every step keeps blocking code
away from the event loop, but it costs two thread wake-ups per step: measured on the 2-core
bench machine under load, a 1-activity workflow's p50 was 2.65-2.88 ms with steps inline
against 2.90-3.51 ms with the hop (``bench/profile_perdure.py --mode wf1``,
``PERDURE_STEP_BUDGET=0`` against 2, alternated). Nearly every step takes microseconds, so
a step runs inline first, under a watchdog:

- A watchdog thread looks every ``SLICE / 2`` at the step under way (the step's number and
  start time, two attribute writes per step: no lock, no wake-up). A step still running
  after ``SLICE`` (0.25 s, well inside the lease renewal period of ``lease_ttl / 3``, so the
  leases never lapse for it) is interrupted: the watchdog sends the loop's thread a signal
  whose handler raises ``StepInterrupted`` there (a busy loop ends at its next bytecode, a
  ``time.sleep`` or a blocking socket call at once, with ``EINTR``).
- The interrupted step's instance is half-applied, so it is dropped: ``run`` raises
  ``SliceExceeded``, the instance turns it into ``StepMoved`` (the actor forgets the
  instance and steps again, replaying what history there is), and the workflow type is
  marked to step in workflow threads from then on in this process, where the full step
  budget and its error apply.

Workflow code is deterministic, so running a step again after the interruption is a replay
like any other. Code that swallows ``StepInterrupted`` (a ``BaseException``) and goes on
blocking holds the loop; it is interrupted again every ``SLICE / 2``.

Inline steps need the event loop on the main thread (only it runs signal handlers) and a
free real-time signal; otherwise every step hops to a workflow thread, as before.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

import structlog

from perdure.runtime.errors import HistoryConflict

from .workflow_threads import StepInterrupted

log = structlog.get_logger("perdure.workflow")
T = TypeVar("T")

SLICE = 0.25  # seconds a step may run inline before it moves to a workflow thread


class SliceExceeded(Exception):
    """The inline step ran past ``SLICE`` and was interrupted; its instance is unusable."""


class StepMoved(HistoryConflict):
    """Raised by the instance for ``SliceExceeded``: its owner drops the instance and steps
    again (reloading whatever history there is; unlike a conflict, none is assumed)."""

    history_written = False


class InlineSteps:
    """The process's watchdog for inline steps (one event loop thread: the main one)."""

    def __init__(self, slice_: float = SLICE) -> None:
        self.slice = slice_
        self._signal: int | None = None
        self._thread_id = 0
        self._installed = False
        self._unavailable = False
        # The step under way, read by the watchdog: its number (0: none) and start time.
        self._step = 0
        self._began = 0.0
        self._interrupting = 0  # the step the watchdog interrupts (the handler checks it)
        self._serial = 0

    def available(self) -> bool:
        """Steps can run inline here (installs the signal handler on first use)."""
        if self._installed:
            return threading.get_ident() == self._thread_id
        if self._unavailable:
            return False
        return self._install()

    def _install(self) -> bool:
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_kill"):
            return False  # no handler can run here: steps hop to workflow threads
        sigrtmin = getattr(signal, "SIGRTMIN", None)
        if sigrtmin is None:
            self._unavailable = True
            return False
        number = sigrtmin + 6
        current = signal.getsignal(number)
        ours = isinstance(getattr(current, "__self__", None), InlineSteps)  # another watchdog's (tests)
        if current not in (signal.SIG_DFL, None) and not ours:
            self._unavailable = True  # the application uses it: leave it alone
            log.info("workflow.inline_steps_off", reason=f"signal {number} is in use")
            return False
        signal.signal(number, self._on_signal)
        self._signal, self._thread_id, self._installed = number, threading.get_ident(), True
        threading.Thread(target=self._watch, name="perdure-step-watchdog", daemon=True).start()
        return True

    def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` now, on this thread; ``SliceExceeded`` if it ran past the slice."""
        self._serial += 1
        step = self._serial
        self._began = time.monotonic()
        self._step = step
        try:
            try:
                outcome = fn()
            finally:
                self._ended()
        except StepInterrupted:
            if self._interrupting != step:
                raise
        # Interrupted, whatever the code made of it (asyncio turns the exception into the
        # workflow task's outcome; code may catch it): what the step did is not its own.
        if self._interrupting == step:
            raise SliceExceeded(f"ran for more than {self.slice:g}s on the event loop")
        return outcome

    def _ended(self) -> None:
        while True:
            try:
                self._step = 0
                return
            except StepInterrupted:
                continue  # the interruption came as the step ended: it has ended all the same

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._step and self._step == self._interrupting:
            raise StepInterrupted()

    def _watch(self) -> None:
        """In its own thread: interrupt a step that has run past the slice."""
        assert self._signal is not None
        while True:
            time.sleep(self.slice / 2)
            step = self._step
            if step and time.monotonic() - self._began > self.slice and self._step == step:
                self._interrupting = step
                signal.pthread_kill(self._thread_id, self._signal)


_inline = InlineSteps()


def inline_steps() -> InlineSteps:
    """The process's inline-step watchdog (a process resource, like the workflow threads)."""
    return _inline
