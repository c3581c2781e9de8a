"""ActivityHandle: a scheduled activity, seen from workflow code."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from perdure.runtime.events import ActivityOptions

if TYPE_CHECKING:
    from .activity_machine import ActivityState
    from .child_machine import ChildState
    from .definitions import ActivityDefinition
    from .instance import WorkflowInstance

R = TypeVar("R")


class ActivityHandle(Generic[R]):
    """Returned by ``activity.start(...)``; awaiting it (or ``result()``) gives the result.

    Scheduling happens when the handle is made, so ``asyncio.gather(a(x), a(y))`` schedules
    ``a(x)`` before ``a(y)`` on every replay.
    """

    def __init__(
        self,
        definition: ActivityDefinition[Any, R],
        instance: WorkflowInstance,
        input: msgspec.Raw,
        options: ActivityOptions,
    ) -> None:
        self.definition = definition
        # The machine is the handle's, not the state's: a state pointing back at its machine
        # (which holds every state) made each finished workflow cyclic garbage.
        self._machine = instance.activity
        self._state: ActivityState = self._machine.schedule(definition.name, input, options)
        self._state.result_codec = definition.result_codec

    @property
    def seq(self) -> int:
        return self._state.seq

    async def result(self) -> R:
        try:
            raw = await asyncio.shield(self._state.future)
        except asyncio.CancelledError:
            # The awaiting workflow task was cancelled (wait_for timeout, workflow cancel):
            # abandon the activity, and let its heartbeats learn that it is no longer wanted.
            self._machine.cancel(self._state)
            raise
        return self.definition.result_codec.decode(raw, what=f"result of activity {self.definition.name!r}")  # type: ignore[no-any-return]

    def __await__(self) -> Generator[Any, None, R]:
        return self.result().__await__()

    def progress(self) -> AsyncIterator[Any]:
        """Checkpoints the activity reports with ``ctx.heartbeat(details)``, in order.

        Once a workflow watches an activity, its heartbeats' details are recorded in history
        (one event each, throttled like heartbeats), so a replay sees the same checkpoints.
        The iteration ends when the activity closes; ``await handle`` then gives the result.
        """
        return self._machine.progress_of(self._state)


class ChildHandle(Generic[R]):
    """A child workflow started from a workflow; awaiting it gives its result."""

    def __init__(
        self, definition: Any, instance: WorkflowInstance, input: msgspec.Raw, execution_id: str | None
    ) -> None:
        self.definition = definition
        self._machine = instance.child
        self._state: ChildState = instance.child.start(definition.name, input, execution_id)

    @property
    def id(self) -> str:
        return self._state.execution_id

    async def result(self) -> R:
        try:
            raw = await asyncio.shield(self._state.future)
        except asyncio.CancelledError:
            self._machine.cancel(self._state)  # the parent's cancellation reaches the child
            raise
        return self.definition.result_codec.decode(raw, what=f"result of child workflow {self.id}")  # type: ignore[no-any-return]

    def __await__(self) -> Generator[Any, None, R]:
        return self.result().__await__()

    def cancel(self) -> None:
        self._machine.cancel(self._state)
