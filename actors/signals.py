"""Signals and conditions of a workflow instance: what workflow code waits for from outside.

Signals arrive as inputs and are kept per name, in order, until code waits for them (a
signal sent twice with the same id counts once). Conditions are predicates re-checked after
every input; neither records a decision of its own.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from perdure.runtime.events import SignalReceived

if TYPE_CHECKING:
    from .replay_loop import ReplayLoop


class Signals:
    def __init__(self, loop: ReplayLoop) -> None:
        self._loop = loop
        self._buffered: dict[str, collections.deque[msgspec.Raw]] = collections.defaultdict(collections.deque)
        self._waiters: dict[str, collections.deque[asyncio.Future[msgspec.Raw]]] = collections.defaultdict(
            collections.deque
        )
        self._ids: set[str] = set()

    def received(self, event: SignalReceived) -> bool:
        if event.id:
            if event.id in self._ids:
                return False  # the same signal sent twice
            self._ids.add(event.id)
        waiters = self._waiters[event.name]
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(event.payload)
                return True
        self._buffered[event.name].append(event.payload)
        return True

    async def wait(self, name: str) -> msgspec.Raw:
        """The next signal ``name``; signals that arrived before anyone waited are kept in order."""
        buffered = self._buffered[name]
        if buffered:
            return buffered.popleft()
        waiter: asyncio.Future[msgspec.Raw] = self._loop.create_future()
        self._waiters[name].append(waiter)
        return await waiter

    def pending(self, name: str) -> int:
        return len(self._buffered[name])

    def clear(self) -> None:
        self._waiters.clear()


class Conditions:
    def __init__(self, loop: ReplayLoop) -> None:
        self._loop = loop
        self._waiting: list[tuple[Callable[[], bool], asyncio.Future[bool]]] = []

    async def wait(self, predicate: Callable[[], bool]) -> bool:
        if predicate():
            return True
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._waiting.append((predicate, waiter))
        return await waiter

    def check(self) -> bool:
        """Resolve conditions whose predicate became true; True if any code became ready."""
        progressed = False
        remaining = []
        for predicate, waiter in self._waiting:
            if waiter.done():
                continue
            if predicate():
                waiter.set_result(True)
                progressed = True
            else:
                remaining.append((predicate, waiter))
        self._waiting = remaining
        return progressed

    def clear(self) -> None:
        self._waiting.clear()
