"""WorkflowHandle: one execution, seen from a service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from perdure.runtime import codec, verbs
from perdure.runtime.errors import (
    ErrorInfo,
    ExecutionNotFound,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowTerminated,
    from_info,
)
from perdure.runtime.events import AnyEvent, HistoryStep
from perdure.runtime.existence import require_execution
from perdure.runtime.limits import MAX_BYTES_REASON, check_size, max_payload_bytes
from perdure.runtime.messages import (
    TERMINAL_STATUSES,
    CancelWorkflow,
    ExecutionRecord,
    QueryRequest,
    SignalWorkflow,
    TerminateWorkflow,
)
from perdure.runtime.payload_seal import MARK

if TYPE_CHECKING:
    from .client import Client


@dataclass(frozen=True, slots=True)
class ExecutionDescription:
    execution_id: str
    workflow: str
    status: str
    run: int
    started_at: float
    closed_at: float | None
    history_length: int
    error: ErrorInfo | None
    revision: int = 0  # the index entry's revision, in a listing (client/index_pages.py)

    @classmethod
    def of(cls, record: ExecutionRecord, *, revision: int = 0) -> ExecutionDescription:
        return cls(
            execution_id=record.execution_id,
            workflow=record.workflow,
            status=record.status,
            run=record.run,
            started_at=record.started_at,
            closed_at=record.closed_at,
            history_length=record.history_length,
            error=record.error,
            revision=revision,
        )


class WorkflowHandle:
    def __init__(self, client: Client, execution_id: str, workflow: Any = None) -> None:
        self._client = client
        self.id = execution_id
        self._workflow = workflow
        # Set by ``Client.start`` once the inbox stored the start: the execution exists, and
        # ``result()`` need not look for it in the inbox and history before the index shows it.
        self._start_stored = False

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.id}>"

    async def _record(self) -> ExecutionRecord | None:
        stored = await self._client.index.get(self.id)
        if stored is None or not stored.data:
            return None
        return codec.decode(codec.execution_record, stored.data, what=f"index entry of {self.id}")

    async def describe(self) -> ExecutionDescription:
        record = await self._record()
        if record is None:
            raise ExecutionNotFound(f"no execution {self.id!r}")
        return ExecutionDescription.of(record)

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the execution to close: its result, or ``WorkflowFailed`` / ``WorkflowCancelled``.

        Watches the execution's index entry (a subscription on its KV subject, re-read after
        every reconnect), so there is no polling loop.

        Raises ``ExecutionNotFound`` at once if no execution has this id (nothing in the
        index, the inbox or history), and ``TimeoutError`` saying what it waited for (the id,
        the timeout, the last status seen) if it does not close within ``timeout`` seconds.
        """
        try:
            async with asyncio.timeout(timeout):
                return await self._client.conn.unless_closed(self._closed_outcome())
        except TimeoutError:
            record = await self._record()
            status = record.status if record else "started, has not been taken by a runtime yet"
            raise TimeoutError(
                f"execution {self.id!r} did not close within {timeout:g} s (status: {status})"
            ) from None

    async def _closed_outcome(self) -> Any:
        async with self._client.index_watch.changes(self.id) as queue:
            record = await self._record()  # after registering: a later change cannot slip by
            if record is None:
                await self._require_exists()  # ExecutionNotFound: not in the index, inbox or history
            while record is None or record.status not in TERMINAL_STATUSES:
                message = await queue.get()
                if message.data and "KV-Operation" not in message.headers:
                    record = codec.decode(
                        codec.execution_record, message.data, what=f"index entry of {self.id}"
                    )
            # The result may be offloaded or encrypted (runtime/payload_seal.py).
            return self._outcome(await self._client.payloads.open(record))

    async def watch(self) -> AsyncIterator[ExecutionDescription]:
        """The execution's description now, then each time it changes (status, length)."""
        async for record in self._records():
            yield ExecutionDescription.of(record)

    async def _records(self) -> AsyncIterator[ExecutionRecord]:
        """The index entry now, then every change (see ``IndexWatch``: no gap, no polling)."""
        async with self._client.index_watch.changes(self.id) as queue:
            record = await self._record()  # after registering: a later change cannot slip by
            if record is not None:
                yield record
            while True:
                message = await queue.get()
                if message.data and "KV-Operation" not in message.headers:
                    yield codec.decode(codec.execution_record, message.data, what=f"index entry of {self.id}")

    def _outcome(self, record: ExecutionRecord) -> Any:
        if record.status == "COMPLETED":
            raw = record.result or codec.NULL
            result_codec = getattr(self._workflow, "result_codec", None)
            if result_codec is not None:
                return result_codec.decode(raw, what=f"result of {self.id}")
            return msgspec.json.decode(raw)
        error = record.error or ErrorInfo(code="workflow.failed", message="failed")
        cause = from_info(error)
        if record.status == "CANCELLED":
            raise WorkflowCancelled(f"execution {self.id!r} was cancelled", cause=cause)
        if record.status == "TERMINATED":
            raise WorkflowTerminated(f"execution {self.id!r} was terminated: {error.message}", cause=cause)
        raise WorkflowFailed(f"execution {self.id!r} failed: {error.type}: {error.message}", cause=cause)

    async def history_steps(self, *, lenient: bool = False) -> list[HistoryStep]:
        """The stored steps, payloads read back (offloaded ones fetched, encrypted ones decrypted
        with this client's keys). Without the key: ``PayloadKeyMissing``, or with ``lenient``
        (the CLI, the console) each such payload reads as the JSON string ``"<encrypted>"``."""
        names = self._client.names
        stored = await self._client.conn.read_subject(names.history_stream, names.history(self.id))
        if not stored:
            raise ExecutionNotFound(f"no history for execution {self.id!r}")
        sealer, what = self._client.payloads, f"history of {self.id}"
        steps = [codec.decode(codec.history_step, s.data, what=what) for s in stored]
        return [
            await sealer.open(step, lenient=lenient) if MARK in s.data else step
            for s, step in zip(stored, steps, strict=True)
        ]

    async def history(self, *, lenient: bool = False) -> list[AnyEvent]:
        """Every event in order: each step's inputs, then the decisions they led to."""
        events: list[AnyEvent] = []
        for step in await self.history_steps(lenient=lenient):
            events.extend(step.inputs)
            events.extend(step.decisions)
        return events

    async def cancel(self, reason: str = "") -> None:
        """Ask the execution to stop: the workflow sees ``CancelledError`` at its current await.
        Raises ``ExecutionNotFound`` if there is no such execution."""
        await self._require_exists()
        await self._client.call(verbs.CANCEL, CancelWorkflow(reason=reason), execution_id=self.id)

    async def _require_exists(self) -> None:
        if self._start_stored:
            return
        client = self._client
        await require_execution(client.conn, client.names, self.id, await client.partitions())

    async def query(self, name: str, *args: Any) -> Any:
        """Ask the runtime that owns the execution; the handler reads live state, writes nothing."""
        body = QueryRequest(execution_id=self.id, name=name, args=msgspec.Raw(codec.encode(list(args))))
        reply = await self._client.call(verbs.QUERY, body, execution_id=self.id)
        return msgspec.json.decode(reply.result)

    async def terminate(self, reason: str = "") -> None:
        """End the execution now, without running any more workflow code (status TERMINATED)."""
        await self._client.call(verbs.TERMINATE, TerminateWorkflow(reason=reason), execution_id=self.id)

    async def signal(self, name: str, payload: Any = None, *, id: str | None = None) -> None:
        """Send signal ``name``; with ``id``, sending it again has no effect.

        Raises ``ExecutionNotFound`` if there is no such execution, ``PayloadTooLarge`` if the
        payload does not fit, and ``InvalidPayload`` if the handle's workflow declares the
        signal's type (``@workflow(signals={name: type})``) and ``payload`` is not one.
        """
        signal_codec = getattr(self._workflow, "signal_codecs", {}).get(name)
        if signal_codec is not None:
            raw = signal_codec.check(payload, what=f"signal {name!r}")
        else:
            raw = msgspec.Raw(codec.encode(payload))
        check_size(len(raw), max_payload_bytes(), what=f"payload of signal {name!r}", reason=MAX_BYTES_REASON)
        await self._require_exists()
        await self._client.call(
            verbs.SIGNAL,
            SignalWorkflow(name=name, payload=raw, id=id or ""),
            execution_id=self.id,
            msg_id=f"signal:{self.id}:{id}" if id else None,
        )
