"""WorkflowTimers: every asyncio timer in workflow code is a durable timer.

The replay loop hands each ``call_at`` (``asyncio.sleep``, ``wait_for`` timeouts, ...) here:
it becomes a ``TimerStarted`` decision with a ``t.<seq>`` id and a ``StartTimer`` effect,
and its handle waits until the matching ``TimerFired`` input makes it ready.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from perdure.runtime.events import TimerCancelled, TimerStarted
from perdure.runtime.timer_ids import TimerId

from .effects import CancelTimer, StartTimer

if TYPE_CHECKING:
    from .decisions import Decisions
    from .replay_loop import ReplayLoop


class WorkflowTimers:
    def __init__(self, decisions: Decisions, loop: ReplayLoop) -> None:
        self._decisions = decisions
        self._loop = loop
        self._handles: dict[TimerId, asyncio.TimerHandle] = {}
        self._ids: dict[int, TimerId] = {}  # id(handle) -> its timer

    def start(self, handle: asyncio.TimerHandle) -> None:
        timer = TimerId.sleep(self._decisions.next_seq("timer"))
        decision = self._decisions.decide(TimerStarted(timer=timer.format(), fire_at=handle.when()))
        self._handles[timer] = handle
        self._ids[id(handle)] = timer
        self._decisions.effect(StartTimer(decision.timer, decision.fire_at))

    def cancel(self, handle: asyncio.TimerHandle) -> None:
        timer = self._ids.pop(id(handle), None)
        if timer is None or self._handles.pop(timer, None) is None or self._decisions.closed:
            return
        self._decisions.decide(TimerCancelled(timer=timer.format()))
        self._decisions.effect(CancelTimer(timer.format()))

    def fired(self, timer: TimerId) -> bool:
        handle = self._handles.pop(timer, None)
        if handle is None:
            return False
        self._ids.pop(id(handle), None)
        self._loop.fire(handle)
        return True

    def cancel_all(self) -> None:
        """The run closes: every pending timer is cancelled (recorded, and its key purged)."""
        for timer, handle in list(self._handles.items()):
            handle._scheduled = False  # type: ignore[attr-defined]
            self._handles.pop(timer, None)
            self._decisions.decide(TimerCancelled(timer=timer.format()))
            self._decisions.effect(CancelTimer(timer.format()))

    def all_after(self, when: float) -> bool:
        """No pending timer fires at or before ``when``."""
        return all(handle.when() > when for handle in self._handles.values())

    def clear(self) -> None:
        self._handles.clear()
        self._ids.clear()
