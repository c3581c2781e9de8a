"""BlockedExecutions: an execution that cannot run parks its messages, shows why, and can end.

An execution is BLOCKED when its start names a workflow this runtime does not host
(``UnknownWorkflow``), when a step on its history subject does not decode
(``HistoryUnreadable``), when its code no longer replays its history
(``NonDeterminismError``), or when its step crashed on ``MAX_STEP_CRASHES`` deliveries of
the same message or steps in a row (``StepCrashed``); actors/step_failures.py judges which. The actor holds this as
``Phase.BLOCKED`` (actors/execution_actor.py) and parks instead of nak-ing
(``StepAcks.park``). Then, for every message it gets:

- a terminate ends it at once, without running workflow code: one history step records it
  (with the parked start first, if it never started), the index says TERMINATED, a parent
  hears of it, and its parked messages are dropped;
- anything else is parked in ``<NS>_DEAD`` (actors/dead_letters.py) and only then acked out
  of the inbox, so a blocked execution holds no inbox consumer slot and loses nothing; a
  request waiting for it is answered with the reason;
- the index entry says BLOCKED with the reason (written, and logged, once: when it becomes
  BLOCKED or the reason changes).

A runtime that takes a partition (``resume``) sends the parked messages of its blocked
executions back to the inbox, in order, when it may be able to run them: it hosts the
workflow, or (other reasons) it is new code. Messages that history already absorbed (a
step crashed after its append) are not sent again.

Why not retry in place: each retry held an inbox slot (a nak with a delay stays pending),
so 5,000 starts of an unknown workflow stopped every other execution of the runtime.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog

from perdure.runtime import codec
from perdure.runtime.errors import (
    ErrorInfo,
    ExecutionBlocked,
    HistoryUnreadable,
    PerdureError,
    UnknownWorkflow,
)
from perdure.runtime.events import (
    HistoryStep,
    InputEvent,
    TerminateRequested,
    WorkflowStarted,
    WorkflowTerminated,
)
from perdure.runtime.messages import (
    DEAD_CODE,
    DEAD_STREAM_SEQ,
    DEAD_WORKFLOW,
    REPLY_HEADER,
    AnyInboxMessage,
    ApiError,
    ApiReply,
    ChildResult,
    ExecutionRecord,
    StartWorkflow,
    TerminateWorkflow,
)
from perdure.runtime.naming import Names
from perdure.runtime.nats_client import Connection
from perdure.runtime.settings import Settings

from .blocked_runs import absorbed_by, closed_run, last_start
from .dead_letters import DeadLetters, original_headers
from .effect_runner import ExecutionRef
from .history_log import EndedBlocked
from .inbox_translation import started_event
from .instance import WorkflowInstance
from .registry import Registry

log = structlog.get_logger("perdure.blocked")


class BlockedExecutions:
    def __init__(
        self, conn: Connection, names: Names, settings: Settings, registry: Registry, dead: DeadLetters
    ) -> None:
        self._conn = conn
        self._names = names
        self._settings = settings
        self._registry = registry
        self.dead = dead
        self._index_prefix = f"$KV.{names.executions_bucket}."
        self._index_stream = f"KV_{names.executions_bucket}"

    # ------------------------------------------------------------------ the actor's side

    async def check(self, execution_id: str) -> None:
        """An execution without history is BLOCKED if the index says so (its start is parked)."""
        record = await self._record(execution_id)
        if record is not None and record.status == "BLOCKED" and record.error is not None:
            raise ExecutionBlocked(record.error)

    async def park(self, execution_id: str, partition: int, batch: Sequence[Any], reason: ErrorInfo) -> bool:
        """Park ``batch`` (or end the execution if it holds a terminate). True if it ended.

        On a NATS failure nothing is acked: the batch is nak'd and comes back.
        """
        try:
            messages = [await self._message(execution_id, d) for d in batch]
            terminate = next((m for m in messages if isinstance(m, TerminateWorkflow)), None)
            if terminate is not None:
                await self._terminate(execution_id, partition, batch, messages, terminate, reason)
                return True
            await self._park_all(execution_id, partition, batch, messages, reason)
        except PerdureError as exc:
            log.warning("execution.park_failed", execution_id=execution_id, error=str(exc))
            for delivery in batch:
                await delivery.nak(delay=1.0)
        return False

    async def _message(self, execution_id: str, delivery: Any) -> AnyInboxMessage | None:
        message = getattr(delivery, "message", None)  # an eager attempt's outcome is decoded
        if message is not None:
            return message  # type: ignore[no-any-return]
        try:
            return codec.decode(codec.inbox_message, delivery.data, what=f"inbox message {delivery.subject}")
        except PerdureError as exc:
            await self.dead.poison(delivery, execution_id=execution_id, reason=exc.to_info())
            return None

    async def _park_all(
        self,
        execution_id: str,
        partition: int,
        batch: Sequence[Any],
        messages: list[AnyInboxMessage | None],
        reason: ErrorInfo,
    ) -> None:
        record = await self._record(execution_id)
        start = next((m for m in messages if isinstance(m, StartWorkflow)), None)
        workflow = start.workflow if start is not None else record.workflow if record is not None else ""
        kept = [(d, m) for d, m in zip(batch, messages, strict=True) if m is not None]
        for delivery, _ in kept:
            await self.dead.park(
                delivery, partition=partition, execution_id=execution_id, reason=reason, workflow=workflow
            )
        if (
            record is None
            or record.status != "BLOCKED"
            or record.error is None
            or record.error.code != reason.code
        ):
            await self._put(_blocked_record(execution_id, workflow, record, reason))
            if self.dead.metrics is not None:
                self.dead.metrics.execution_blocked(reason.code)
            log.warning(
                "execution.blocked",
                execution_id=execution_id,
                workflow=workflow,
                code=reason.code,
                error=reason.message,
            )
        refusal = ApiReply(ok=False, error=ApiError(code=reason.code, message=reason.message))
        for delivery, _ in kept:
            await self._reply(delivery, refusal)
            await delivery.ack()

    async def _terminate(
        self,
        execution_id: str,
        partition: int,
        batch: Sequence[Any],
        messages: list[AnyInboxMessage | None],
        terminate: TerminateWorkflow,
        reason: ErrorInfo,
    ) -> None:
        """End a blocked execution without its code: one step in history, then ``_finish``."""
        subject = self._names.history(execution_id)
        last = await self._conn.get_last(self._names.history_stream, subject)
        start = next((m for m in messages if isinstance(m, StartWorkflow)), None)
        inputs: list[InputEvent] = [TerminateRequested(reason=terminate.reason)]
        started: WorkflowStarted | None = None
        if last is None:  # it never started: its start is parked (or in this batch)
            start = start or await self._parked_start(execution_id, partition)
            if start is not None:
                started = started_event(start, run=1)
                inputs.insert(0, started)
        else:
            started, _ = last_start(await self._conn.read_subject(self._names.history_stream, subject))
        step = HistoryStep(
            time=time.time(),
            inputs=inputs,
            decisions=[WorkflowTerminated(reason=terminate.reason)],
            absorbed=[d.stream_seq for d in batch if d.stream_seq],
            runtime=self._settings.name,
            ended_blocked=reason.code,
        )
        await self._conn.publish(
            subject, codec.encode(step), expected_last_subject_seq=last.seq if last else 0
        )
        await self._finish(execution_id, partition, started, terminate.reason, step.time)
        log.info("execution.terminated_while_blocked", execution_id=execution_id, reason=terminate.reason)
        closed = ApiReply(
            ok=False, error=ApiError(code="activity.closed", message="the execution was terminated")
        )
        for delivery, message in zip(batch, messages, strict=True):
            if message is not terminate:
                await self._reply(delivery, closed)
            elif REPLY_HEADER in delivery.headers:
                await self._reply(delivery, ApiReply(ok=True))
            await delivery.ack()

    async def _finish(
        self, execution_id: str, partition: int, started: WorkflowStarted | None, reason: str, now: float
    ) -> None:
        """What follows a terminate in history: the index, the parent, the parked messages.
        Idempotent: ``load_closed`` runs it again if a crash came in between."""
        record = await self._record(execution_id)
        error = ErrorInfo(
            code="workflow.terminated",
            type="WorkflowTerminated",
            message=reason or "terminated",
            retryable=False,
        )
        workflow = started.workflow if started is not None else record.workflow if record is not None else ""
        run = started.run if started is not None else 1
        await self._put(
            ExecutionRecord(
                execution_id=execution_id,
                workflow=workflow,
                status="TERMINATED",
                run=run,
                started_at=record.started_at if record is not None else now,
                closed_at=now,
                error=error,
            )
        )
        if started is not None and started.parent:
            child = ChildResult(
                run=started.parent_run, seq=started.parent_seq, status="TERMINATED", error=error
            )
            await self._conn.publish(
                self._names.inbox(started.parent), codec.encode(child), msg_id=f"{execution_id}:{run}:closed"
            )
        await self.dead.forget_parked(partition, execution_id)

    async def without_replay(
        self, ended: EndedBlocked | None, execution_id: str, partition: int
    ) -> tuple[WorkflowInstance | None, ExecutionRef | None]:
        """What the actor holds of an execution it does not replay: nothing if it has no history
        (``ExecutionBlocked`` if the index says its start is parked), or a run ended while BLOCKED."""
        if ended is None:
            await self.check(execution_id)
            return None, None
        return await self.load_closed(ended, execution_id, partition)

    async def load_closed(
        self, ended: EndedBlocked, execution_id: str, partition: int
    ) -> tuple[WorkflowInstance, ExecutionRef]:
        """A run terminated while BLOCKED (``blocked_runs.closed_run``), and the end of its
        termination if a crash cut it short."""
        stored, last = ended.stored, ended.last
        closed = closed_run(stored, last, execution_id, partition, self._registry)
        if closed is None:
            raise HistoryUnreadable(f"history of {execution_id} ends blocked without a termination")
        record = await self._record(execution_id)
        if record is None or record.status != "TERMINATED":
            reason = next((e.reason for e in last.inputs if isinstance(e, TerminateRequested)), "")
            await self._finish(execution_id, partition, closed[0].started, reason, last.time)
        return closed

    async def _parked_start(self, execution_id: str, partition: int) -> StartWorkflow | None:
        for stored in await self.dead.read_parked(partition, execution_id):
            try:
                message = codec.inbox_message.decode(stored.data)
            except msgspec.DecodeError:
                continue
            if isinstance(message, StartWorkflow):
                return message
        return None

    # ------------------------------------------------------------------ the runtime's side

    async def resume(self, partition: int) -> int:
        """Send the parked messages of ``partition``'s blocked executions back to the inbox,
        for those this runtime may run; returns how many executions were resumed."""
        try:
            blocked = await self.dead.parked_in(partition)
        except PerdureError as exc:
            log.warning("blocked.scan_failed", partition=partition, error=str(exc))
            return 0
        resumed = 0
        for last in blocked:
            execution_id = last.subject.rsplit(".", 1)[1]
            code, workflow = last.headers.get(DEAD_CODE, ""), last.headers.get(DEAD_WORKFLOW, "")
            if code == UnknownWorkflow.code and self._registry.workflow(workflow) is None:
                continue  # still not hosted here: it stays parked, nothing logged again
            try:
                await self._resume_one(execution_id, partition)
                resumed += 1
            except PerdureError as exc:
                log.warning("execution.resume_failed", execution_id=execution_id, error=str(exc))
        return resumed

    async def _resume_one(self, execution_id: str, partition: int) -> None:
        parked = await self.dead.read_parked(partition, execution_id)
        if not parked:
            return
        history = await self._conn.read_subject(self._names.history_stream, self._names.history(execution_id))
        absorbed = absorbed_by(history)
        record = await self._record(execution_id)
        if history and record is not None and record.status == "BLOCKED":
            # RUNNING again; its owner blocks it again (once) if it still cannot run. (Without
            # history, the start does it: until then, a message to it is parked, not dropped.)
            await self._put(msgspec.structs.replace(record, status="RUNNING", error=None))
        sent = 0
        for stored in parked:
            if int(stored.headers.get(DEAD_STREAM_SEQ, "0") or 0) in absorbed:
                continue  # already in history (its step crashed after the append)
            await self._conn.publish(
                self._names.inbox(execution_id),
                stored.data,
                headers=original_headers(stored),
                msg_id=f"resume:{stored.seq}",
            )
            sent += 1
        await self.dead.forget_parked(partition, execution_id, through_seq=parked[-1].seq)
        if self.dead.metrics is not None:
            self.dead.metrics.resumed.inc()
        log.info("execution.resumed", execution_id=execution_id, messages=sent)

    # ------------------------------------------------------------------ index and replies

    async def _record(self, execution_id: str) -> ExecutionRecord | None:
        stored = await self._conn.get_last(self._index_stream, self._index_prefix + execution_id)
        if stored is None or not stored.is_value:
            return None
        try:
            return codec.execution_record.decode(stored.data)
        except msgspec.DecodeError:
            return None

    async def _put(self, record: ExecutionRecord) -> None:
        await self._conn.publish(self._index_prefix + record.execution_id, codec.encode(record))

    async def _reply(self, delivery: Any, reply: ApiReply) -> None:
        subject = delivery.headers.get(REPLY_HEADER)
        if subject:
            await self._conn.publish_core(subject, codec.encode(reply))


def _blocked_record(
    execution_id: str, workflow: str, record: ExecutionRecord | None, reason: ErrorInfo
) -> ExecutionRecord:
    if record is not None:
        return msgspec.structs.replace(
            record, workflow=workflow or record.workflow, status="BLOCKED", error=reason, closed_at=None
        )
    return ExecutionRecord(
        execution_id=execution_id, workflow=workflow, status="BLOCKED", started_at=time.time(), error=reason
    )
