"""The messages of one step: decoded, then each paired with its translation.

Inbox deliveries are decoded here; one that does not decode is not something Perdure wrote,
so it is poison: stored in ``<NS>_DEAD`` with the reason (actors/dead_letters.py), a sender
waiting for a reply is told why, and it is acked out of the inbox. Eager outcomes from this
process (``LocalResult``) arrive decoded. Sealed payloads (offloaded, encrypted) are opened
here (runtime/payload_seal.py); one that cannot be (its object gone, no key for it here) is
not poison but a fault of this runtime or of the store: the execution is BLOCKED at once with
that reason (``payload.key_missing``...), its messages parked, never dropped.

``take_step`` cuts a step's messages out of the mailbox: a step records its inputs in one
history message, so messages that together exceed the server's ``max_payload`` (many large
signals or results waiting at once) are taken in several steps, acked step by step in order,
rather than in one append that could never be stored.
"""

from __future__ import annotations

from dataclasses import dataclass

from perdure.runtime import codec
from perdure.runtime.errors import ExecutionBlocked, InvalidPayload, PayloadUnreadable
from perdure.runtime.events import InputEvent, WorkflowStarted
from perdure.runtime.limits import step_inputs_limit
from perdure.runtime.messages import AnyInboxMessage, TimerExpired

from .dead_letters import DeadLetters
from .held_ack import LocalResult
from .inbox_translation import Refusal, Translation
from .replies import wants_reply
from .step_acks import Incoming
from .timers import TimerKey


def take_step(mailbox: list[Incoming], max_payload: int | None) -> tuple[list[Incoming], list[Incoming]]:
    """The messages of the next step (the longest prefix of ``mailbox`` whose sizes add up
    to at most ``step_inputs_limit(max_payload)``, and at least one message), and the rest,
    in order."""
    limit = step_inputs_limit(max_payload)
    total = 0
    for i, delivery in enumerate(mailbox):
        total += input_size(delivery)
        if total > limit and i > 0:
            return mailbox[:i], mailbox[i:]
    return mailbox, []


def input_size(delivery: Incoming) -> int:
    """About the bytes a message adds to its step's history message (its payload)."""
    if not isinstance(delivery, LocalResult):
        return len(delivery.data)
    result, error = delivery.message, delivery.message.error
    size = len(result.result)
    if error is not None:
        size += len(error.message) + len(error.traceback) + len(error.details)
    return size


@dataclass(slots=True)
class StepInput:
    delivery: Incoming
    message: AnyInboxMessage
    translation: Translation | None = None


async def decode_batch(batch: list[Incoming], dead: DeadLetters, execution_id: str) -> list[StepInput]:
    """The decoded messages of ``batch``. The poison ones leave ``batch`` (dead-lettered,
    acked, their credit returned): a nak or a park of the rest must not settle them again."""
    out: list[StepInput] = []
    dead_lettered: set[int] = set()
    try:
        for delivery in batch:
            if isinstance(delivery, LocalResult):
                out.append(StepInput(delivery, delivery.message))
                continue
            try:
                message = await dead.sealer.decode(
                    codec.inbox_message, delivery.data, what=f"inbox message {delivery.subject}"
                )
            except PayloadUnreadable as exc:
                raise ExecutionBlocked(exc.to_info()) from None
            except InvalidPayload as exc:
                await dead.poison(delivery, execution_id=execution_id, reason=exc.to_info())  # counted
                delivery.release()
                dead_lettered.add(id(delivery))
                continue
            out.append(StepInput(delivery, message))
    finally:
        if dead_lettered:  # also when a later one could not be stored: the rest are nak'd
            batch[:] = [delivery for delivery in batch if id(delivery) not in dead_lettered]
    return out


def events_of(items: list[StepInput]) -> list[InputEvent]:
    """The history inputs the messages translated to, in order."""
    events: list[InputEvent] = []
    for item in items:
        translation = item.translation
        if translation is not None and not isinstance(translation, Refusal):
            events.append(translation)
    return events


def needs_current(items: list[StepInput]) -> bool:
    """Whether a step that applied none of ``items`` must first check that no other holder
    appended meanwhile: before refusing a caller, and before absorbing a timer's firing (acked,
    its key purged: lost for good if the timer was started in a step this actor has not seen)."""
    return any(wants_reply(i.delivery.headers) or isinstance(i.message, TimerExpired) for i in items)


def fired_timers(items: list[StepInput], partition: int, execution_id: str) -> list[TimerKey]:
    """The keys of the timers whose firings a step took in (applied, stale or duplicate):
    once the firing is in history, its expiry marker must not fire again."""
    return [
        TimerKey(partition, execution_id, item.message.run, item.message.timer)
        for item in items
        if isinstance(item.message, TimerExpired)
    ]


def trace_of(started: WorkflowStarted | None, items: list[StepInput]) -> str:
    """The start's trace context (``traceparent``) of the run a step belongs to: recorded in
    its ``WorkflowStarted``, which the first step finds among its own translations."""
    if started is not None:
        return started.trace
    for item in items:
        if isinstance(item.translation, WorkflowStarted):
            return item.translation.trace
    return ""
