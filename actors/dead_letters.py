"""DeadLetters: where messages that cannot be processed go, instead of looping.

``<NS>_DEAD`` keeps each one with its original data and headers, plus headers saying why it
is there, which execution it was for, and the subject and sequence it came from
(``runtime.messages.DEAD_*``). Two kinds of subject:

- ``<ns>.dead.parked.<partition>.<execution>``: messages of a BLOCKED execution (its
  workflow is not hosted, its history does not decode, its step keeps crashing, its code is
  nondeterministic). They are sent back to the inbox, in order, when a runtime that may run
  the execution takes its partition (actors/blocked.py).
- ``<ns>.dead.poison.<execution>``: messages that can never be processed (they do not decode).

A message is acked out of its stream only once its dead letter is stored, so nothing is
lost; a crash in between parks it again under the same ``Nats-Msg-Id`` (``dead:<stream
seq>``), which the stream's duplicate window drops.
"""

from __future__ import annotations

from typing import Any

import structlog

from perdure.runtime import codec
from perdure.runtime.errors import ErrorInfo
from perdure.runtime.messages import (
    DEAD_CODE,
    DEAD_EXECUTION,
    DEAD_HEADERS,
    DEAD_MSG_ID,
    DEAD_REASON,
    DEAD_STREAM_SEQ,
    DEAD_SUBJECT,
    DEAD_WORKFLOW,
    REPLY_HEADER,
    ApiError,
    ApiReply,
)
from perdure.runtime.naming import Names
from perdure.runtime.nats_admin import purge_subject
from perdure.runtime.nats_client import Connection, StoredMessage
from perdure.runtime.payload_seal import sealer_for

from .metrics import RuntimeMetrics

log = structlog.get_logger("perdure.dead_letters")

_REASON_MAX = 2000  # characters of the reason kept in a header (tracebacks go to the index)


def one_line(text: str) -> str:
    """A header value: no line breaks, bounded."""
    return " ".join(text.split())[:_REASON_MAX]


class DeadLetters:
    def __init__(self, conn: Connection, names: Names, metrics: RuntimeMetrics | None = None) -> None:
        self._conn = conn
        self._names = names
        self.metrics = metrics
        self.sealer = sealer_for(conn, names)  # opens the payloads of what is read back
        self.parked = 0  # messages parked by this runtime (each counted once)
        self.poisoned = 0
        if metrics is not None:
            metrics.watch_parked(self.parked_counts)

    async def park(
        self, delivery: Any, *, partition: int, execution_id: str, reason: ErrorInfo, workflow: str = ""
    ) -> None:
        """Keep a BLOCKED execution's message until it can run; the caller acks it afterwards."""
        subject = self._names.dead_parked(partition, execution_id)
        await self._store(delivery, subject, execution_id, reason, workflow)
        self.parked += 1
        if self.metrics is not None:
            self.metrics.message_parked(reason.code)
        log.debug("dead_letter.parked", execution_id=execution_id, code=reason.code, total=self.parked)

    async def poison(self, delivery: Any, *, execution_id: str, reason: ErrorInfo) -> None:
        """Keep a message that can never be processed, and ack it out of its stream."""
        await self._store(delivery, self._names.dead_poison(execution_id), execution_id, reason, "")
        self.poisoned += 1
        if self.metrics is not None:
            self.metrics.dead_lettered("bad_inbox_message")
        log.warning(
            "dead_letter.poison",
            execution_id=execution_id,
            subject=delivery.subject,
            code=reason.code,
            error=reason.message,
            total=self.poisoned,
        )
        reply = delivery.headers.get(REPLY_HEADER)
        if reply:  # someone waits for an answer: say what is wrong rather than let them time out
            refusal = ApiReply(ok=False, error=ApiError(code=reason.code, message=reason.message))
            await self._conn.publish_core(reply, codec.encode(refusal))
        await delivery.ack()

    async def _store(
        self, delivery: Any, subject: str, execution_id: str, reason: ErrorInfo, workflow: str
    ) -> None:
        headers = {k: v for k, v in delivery.headers.items() if not k.startswith("Nats-")}
        original_id = delivery.headers.get("Nats-Msg-Id")
        if original_id:
            headers[DEAD_MSG_ID] = original_id
        headers.update(
            {
                DEAD_CODE: reason.code,
                DEAD_REASON: one_line(reason.message),
                DEAD_EXECUTION: execution_id,
                DEAD_SUBJECT: delivery.subject,
                DEAD_STREAM_SEQ: str(delivery.stream_seq),
            }
        )
        if workflow:
            headers[DEAD_WORKFLOW] = workflow
        # An eager attempt's outcome (held_ack.LocalResult) has no bytes of its own.
        message = getattr(delivery, "message", None)
        data = codec.encode(message) if message is not None and not delivery.data else delivery.data
        msg_id = f"dead:{delivery.stream_seq}" if delivery.stream_seq else None
        await self._conn.publish(subject, data, headers=headers, msg_id=msg_id)

    # ------------------------------------------------------------------ parked

    async def parked_in(self, partition: int) -> list[StoredMessage]:
        """The last parked message of every BLOCKED execution of ``partition`` (one request)."""
        return await self._conn.get_multi_last(
            self._names.dead_stream, [self._names.dead_parked_partition(partition)]
        )

    async def parked_counts(self, partitions: list[int]) -> tuple[int, int]:
        """(executions, messages) parked in ``partitions``: one stream info with per-subject counts."""
        info = await self._conn.stream_info(
            self._names.dead_stream, subjects_filter=f"{self._names.namespace}.dead.parked.>"
        )
        owned = {str(p) for p in partitions}
        # <ns>.dead.parked.<partition>.<execution>
        counts = [n for subject, n in (info.state.subjects or {}).items() if subject.split(".")[3] in owned]
        return len(counts), sum(counts)

    async def read_parked(self, partition: int, execution_id: str) -> list[StoredMessage]:
        return await self._conn.read_subject(
            self._names.dead_stream, self._names.dead_parked(partition, execution_id)
        )

    async def forget_parked(
        self, partition: int, execution_id: str, *, through_seq: int | None = None
    ) -> None:
        """Drop an execution's parked messages (all, or those up to ``through_seq``)."""
        subject = self._names.dead_parked(partition, execution_id)
        if through_seq is None:
            await (await self._conn.purge_nowait(self._names.dead_stream, subject))
        else:
            await purge_subject(
                self._conn, stream=self._names.dead_stream, subject=subject, keep_from_seq=through_seq + 1
            )


def original_headers(stored: StoredMessage) -> dict[str, str]:
    """A parked message's headers as they were, to send it again (no reply: nobody waits now)."""
    return {k: v for k, v in stored.headers.items() if k not in DEAD_HEADERS and k != REPLY_HEADER}
