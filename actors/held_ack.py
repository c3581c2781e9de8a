"""HeldAck and LocalResult: how an eager attempt's outcome reaches its execution, and how
the inbox messages of the step that scheduled it stay unacked until that outcome is in
history (the crash safety of eager attempts, actors/local_activities.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from perdure.runtime.errors import ScopeClosed
from perdure.runtime.messages import ActivityResult
from perdure.runtime.nats_consumer import Delivery

KEEPALIVE_EVERY = 10.0  # seconds between in-progress acks of held inbox messages (ack wait 30 s)

Spawn = Callable[[Coroutine[Any, Any, Any], str], Any]  # a supervisor's spawn: every task has an owner


class HeldAck:
    """The inbox deliveries of one step, acked once the step and its eager attempts are done.

    Starts with one share for the step itself (``step_done``); each eager attempt adds one,
    given back by ``conclude``. At zero the deliveries are acked; ``fail`` naks them instead
    (they come back and the step's effects are redone), once.
    """

    __slots__ = ("_deliveries", "_keepalive", "_parents", "_settled", "_shares", "_spawn")

    def __init__(self, deliveries: list[Delivery], parents: list[HeldAck], spawn: Spawn) -> None:
        self._deliveries = deliveries
        # A step that absorbed eager outcomes and started more eager attempts carries their
        # scheduling steps' holds on: the first inbox message of a chain of eager attempts
        # stays unacked until the chain's last outcome is in history.
        self._parents = parents
        self._spawn = spawn
        self._shares = 1
        self._settled = False
        self._keepalive: asyncio.TimerHandle | None = None

    @property
    def attempts(self) -> int:
        return self._shares - 1

    def add_attempt(self) -> None:
        self._shares += 1
        if self._keepalive is None and self._deliveries:
            self._arm_keepalive()

    def step_done(self) -> None:
        self.conclude()

    def conclude(self) -> None:
        self._shares -= 1
        if self._shares == 0 and not self._settled:
            self._settle(ack=True)

    def fail(self) -> None:
        if not self._settled:
            self._settle(ack=False)

    def abandon(self) -> None:
        """The step failed and its owner naks the deliveries itself (and fails the parents
        through the outcomes in its batch)."""
        self._settled = True
        if self._keepalive is not None:
            self._keepalive.cancel()

    def _settle(self, *, ack: bool) -> None:
        # Iterative, not recursive: holds can chain (each settles its parents).
        todo = [self]
        while todo:
            hold = todo.pop()
            hold._settled = True
            if hold._keepalive is not None:
                hold._keepalive.cancel()
            if hold._deliveries:
                with contextlib.suppress(ScopeClosed):  # stopping: the next owner gets them back
                    hold._spawn(hold._send(ack), "inbox-acks")
            for parent in hold._parents:
                if ack:
                    parent._shares -= 1
                if not parent._settled and (parent._shares == 0 or not ack):
                    todo.append(parent)

    async def _send(self, ack: bool) -> None:
        for delivery in self._deliveries:
            await (delivery.ack() if ack else delivery.nak(delay=0.0))

    def _arm_keepalive(self) -> None:
        self._keepalive = asyncio.get_running_loop().call_later(KEEPALIVE_EVERY, self._keep_in_progress)

    def _keep_in_progress(self) -> None:
        if self._settled:
            return
        with contextlib.suppress(ScopeClosed):  # stopping: no keepalive, the next owner gets them
            self._spawn(self._in_progress(), "inbox-in-progress")
            self._arm_keepalive()

    async def _in_progress(self) -> None:
        for delivery in self._deliveries:
            await delivery.in_progress()


class LocalResult:
    """An eager attempt's outcome, handed to the execution actor like an inbox delivery.

    It has no stream sequence (0): nothing to ack on the server. Acking it (its step is
    appended) gives its share of the scheduling step's ``HeldAck`` back; nak-ing it (the
    step failed) hands it to the actor again after the delay, as the server would redeliver
    an inbox message: the outcome is kept, not dropped.
    """

    __slots__ = ("_redeliver", "_settled", "headers", "hold", "message", "subject")

    data = b""
    stream_seq = 0
    num_delivered = 1

    def __init__(
        self,
        message: ActivityResult,
        hold: HeldAck,
        subject: str,
        settled: Callable[..., None],
        redeliver: Callable[[LocalResult, float], None],
    ) -> None:
        self.message = message
        self.subject = subject
        self.headers: dict[str, str] = {}
        self.hold = hold
        self._settled = settled  # the attempt stops counting as running here
        self._redeliver = redeliver

    def absorbed(self) -> None:
        """In history, and its share of ``hold`` passed on to the step that absorbed it."""
        self._settled()

    async def ack(self) -> None:
        self._settled()
        self.hold.conclude()

    async def term(self) -> None:
        await self.ack()

    async def nak(self, delay: float | None = None) -> None:
        self._redeliver(self, delay or 0.0)

    async def in_progress(self) -> None:
        return None

    def drop(self) -> None:
        """Nobody here can absorb it (the partition moved): hand the scheduling step back."""
        self._settled(False)  # not concluded: a copy of the attempt waiting here may run
        self.hold.fail()
