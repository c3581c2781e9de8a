"""StepAcks: the inbox acks of one execution's steps, in step order, once each step is durable.

A step's messages are acked only after its history append and after its effects' writes are
stored (``Sent.finish``), and after the previous step's acks (a purge must not overtake the
put of the key it removes). The actor goes on to its next step meanwhile: one task per step
waits for the one before it. A step that started eager attempts hands its acks to a
``HeldAck`` instead, which acks once those attempts' outcomes are in history too.

Whatever fails is nak'd: the messages come back, and the redo ledger redoes their steps'
effects. The messages of a BLOCKED execution are parked instead (``park``): stored in
``<NS>_DEAD``, then acked, so that they hold no consumer slot (actors/blocked.py).

Every inbox message gives its credit back, whatever its fate, to the consumer that
delivered it (``Delivery.release``): after a consumer is recreated, the cached actors' old
messages must not be charged to the new one, nor the new one's left unreturned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from perdure.runtime.errors import PerdureError, ScopeClosed
from perdure.runtime.nats_consumer import Delivery

from .effect_runner import Sent
from .held_ack import HeldAck, LocalResult, Spawn

Incoming = Delivery | LocalResult  # from the inbox, or an eager attempt's outcome from this process


class StepAcks:
    __slots__ = ("_log", "_settling", "_spawn")

    def __init__(self, spawn: Spawn, log: Callable[[], Any]) -> None:
        self._spawn = spawn
        self._log = log  # the actor's logger (its ids are in the drain's context, log_context)
        self._settling: asyncio.Task[None] | None = None  # the last step's effects and acks, under way

    @property
    def settling(self) -> bool:
        return self._settling is not None and not self._settling.done()

    async def wait(self) -> None:
        if self._settling is not None:
            await asyncio.wait([self._settling])

    @staticmethod
    def release(batch: list[Incoming]) -> None:
        """Give the consumers their credit back (also for messages terminated, not acked)."""
        for delivery in batch:
            if isinstance(delivery, Delivery):
                delivery.release()

    @staticmethod
    def abandon(batch: list[Incoming]) -> None:
        """No step will take these (the partition stopped): an eager outcome hands its
        scheduling step back; inbox messages are redelivered to the next owner. Empties it."""
        for delivery in batch:
            if isinstance(delivery, LocalResult):
                delivery.drop()
        batch.clear()

    async def nak(self, batch: list[Incoming], *, delay: float, hold: HeldAck | None) -> None:
        if hold is not None:
            hold.abandon()  # its deliveries are nak'd here; its attempts' outcomes settle nothing
        for delivery in batch:
            await delivery.nak(delay=delay)
        self.release(batch)

    async def park(self, batch: list[Incoming], *, hold: HeldAck | None, to_dead: Awaitable[bool]) -> bool:
        """Poison: ``to_dead`` stores each message in ``<NS>_DEAD`` and acks it (or naks them
        all if it cannot); returns what ``to_dead`` returns (the execution ended)."""
        if hold is not None:
            hold.abandon()  # its deliveries are parked here; its attempts' outcomes settle nothing
        try:
            return await to_dead
        finally:
            self.release(batch)

    def settle_later(
        self, batch: list[Incoming], sent: Sent, hold: HeldAck | None, on_settled: Callable[[], None]
    ) -> None:
        """The step is in history and its writes are sent: a task waits for the acks (after
        the previous step's), then acks; ``on_settled`` runs if it was the last step."""
        after = self._settling
        try:
            self._settling = self._spawn(self._settle(batch, hold, sent, after, on_settled), "settle")
        except ScopeClosed:  # stopping: unacked, the messages go to the partition's next owner
            self._settling = None

    async def _settle(
        self,
        batch: list[Incoming],
        hold: HeldAck | None,
        sent: Sent,
        after: asyncio.Task[None] | None,
        on_settled: Callable[[], None],
    ) -> None:
        if after is not None and not after.done():
            await asyncio.wait([after])
        try:
            await sent.finish()
        except PerdureError as exc:
            # History has the step: its messages come back and their effects are redone. An
            # eager outcome in it would come back closed, and be dropped: its scheduling step's
            # messages come back instead, whose redo covers this step (redo_ledger.covered_by).
            self._log().warning("execution.effects_failed", error=str(exc))
            for delivery in batch:
                if isinstance(delivery, LocalResult):
                    delivery.drop()
            await self.nak([d for d in batch if not isinstance(d, LocalResult)], delay=1.0, hold=hold)
            return
        await self._done(batch, hold)
        if self._settling is asyncio.current_task():
            self._settling = None
            on_settled()

    async def _done(self, batch: list[Incoming], hold: HeldAck | None) -> None:
        """The step is durable: ack its inbox messages; those of a step that started eager
        attempts wait for their outcomes to be in history too (``HeldAck``)."""
        if hold is not None and hold.attempts:
            # Outcomes in this batch pass their shares on to ``hold`` (its parents): the
            # messages that scheduled them are acked with this step's own, at the chain's end.
            for delivery in batch:
                if isinstance(delivery, LocalResult):
                    delivery.absorbed()
            hold.step_done()
        else:
            for delivery in batch:
                await delivery.ack()
        self.release(batch)
