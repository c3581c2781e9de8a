"""EffectRunner: performs a step's effects against NATS, pipelined, after the history append.

All publishes of a step are sent back to back and their acks awaited together, so a step
costs about one round trip for its effects whatever their number.

Size: about 510 lines, one idea (each effect kind's writes, sent and acked as one batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, assert_never

import msgspec
import structlog

from perdure.runtime import codec, tracing
from perdure.runtime.errors import ErrorInfo, HistoryConflict
from perdure.runtime.kv_bucket import KVBucket
from perdure.runtime.messages import (
    ActivityRecord,
    ActivityTask,
    CancelWorkflow,
    ChildResult,
    ExecutionRecord,
    StartWorkflow,
)
from perdure.runtime.naming import Names
from perdure.runtime.nats_client import Connection
from perdure.runtime.payload_seal import sealer_for
from perdure.runtime.rawjson import NULL
from perdure.runtime.timer_ids import activity_prefix, attempt_prefix
from perdure.runtime.tokens import TokenData, encode_token

from .attempt_gate import RECHECK_HEADER
from .eager_keys import EagerKeys
from .effects import (
    CancelChild,
    CancelTimer,
    CloseActivity,
    Effect,
    NotifyParent,
    ObserveActivity,
    PauseAttempt,
    StartAttempt,
    StartChild,
    StartTimer,
    UpdateIndex,
    attempt_timers,
    checkpoint_key,
    record_timer,
    retry_timer,
    schedule_to_close_timer,
    schedule_to_start_timer,
    timeout_timer,
)
from .held_ack import HeldAck
from .local_activities import LocalActivities
from .running_attempts import RunningAttempts, attempt_id
from .timers import TimerKey, TimerService

log = structlog.get_logger("perdure.effects")

Wanted = Callable[[int, int], bool]  # (activity seq, attempt): still wanted by the execution?


@dataclass(slots=True)
class ExecutionRef:
    """What effects need to know about the execution they belong to."""

    execution_id: str
    workflow: str
    run: int
    partition: int
    started_at: float
    history_length: int = 0


class Sent:
    """A step's effects on their way: the writes sent (acks pending), and the purges, held
    back until ``finish`` (the caller first lets the previous step's writes be stored: a
    purge takes another path through the server than a put, and must not overtake the put
    of the key it removes)."""

    __slots__ = ("futures", "purges")

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[Any]] = []
        self.purges: list[Callable[[], Awaitable[asyncio.Future[Any]]]] = []

    def append(self, future: asyncio.Future[Any]) -> None:
        self.futures.append(future)

    def purge(self, send: Callable[[], Awaitable[asyncio.Future[Any]]]) -> None:
        self.purges.append(send)

    async def finish(self) -> None:
        """Send the purges, then await every ack (raises the first failure, in the order
        sent). One by one rather than ``gather``: most are answered by now, and awaiting a
        done future costs nothing, where ``gather`` builds a future and a callback each."""
        for send in self.purges:
            self.futures.append(await send())
        try:
            for future in self.futures:
                await future
        except BaseException:
            for future in self.futures:  # nobody reads the other outcomes: say so
                future.add_done_callback(_retrieve)
            raise


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class EffectRunner:
    def __init__(self, conn: Connection, names: Names, timers: TimerService) -> None:
        self._conn = conn
        self._names = names
        self._timers = timers
        self._records = KVBucket(conn, names, names.timers_bucket)  # records and checkpoints
        self._index = KVBucket(conn, names, names.executions_bucket)
        self._sealer = sealer_for(conn, names)  # payloads offloaded/encrypted as they are sent
        self.local: LocalActivities | None = None  # set by a worker that hosts activities
        self.running = RunningAttempts()  # shared with the worker's activity actors

    async def perform(self, ref: ExecutionRef, effects: list[Effect]) -> None:
        """Send every effect, then await their acks."""
        await (await self.send(ref, effects)).finish()

    async def send(
        self,
        ref: ExecutionRef,
        effects: list[Effect],
        *,
        eager: list[int] | None = None,
        hold: HeldAck | None = None,
        wanted: Wanted = lambda seq, attempt: True,
    ) -> Sent:
        """Send every effect but the purges (``Sent.finish`` sends those and awaits all). The
        attempts of the activities in ``eager`` (recorded in the step) start here and now under
        ``hold`` if a slot is free, and if still ``wanted`` when their task runs."""
        out = Sent()
        for effect in effects:
            if isinstance(effect, StartAttempt):
                local = hold if eager and effect.decision.seq in eager else None
                still = functools.partial(wanted, effect.decision.seq, effect.decision.attempt)
                await self._start_attempt(ref, effect, out, local, wanted=still)
            else:
                await self._perform_one(ref, effect, out)
        return out

    async def redo(self, ref: ExecutionRef, effects: list[Effect]) -> None:
        """Perform a redone step's effects again (those still due: ``redo_ledger.due_again``).

        An attempt whose record says a worker started it (heartbeat armed, or token handed
        over by ``make_async()``) is left to that worker. Any other open attempt gets its
        work item again (same ``Nats-Msg-Id``, nonce and token: all from history), also when
        it runs here eagerly: the work item brings it back if this runtime dies, and the
        activity actor that pulls it here waits for the running one (``RunningAttempts``).
        Its record is created only if absent: one a worker armed keeps its TTL and flags."""
        out = Sent()
        for effect in effects:
            if isinstance(effect, StartAttempt):
                if not await self._handed_over(ref, effect):
                    await self._start_attempt(ref, effect, out, None, create_only=True)
            else:
                await self._perform_one(ref, effect, out)
        await out.finish()

    async def _handed_over(self, ref: ExecutionRef, effect: StartAttempt) -> bool:
        d = effect.decision
        record = await self.read_record(ref, record_timer(d.seq, d.attempt))
        return record is not None and record.started

    def forget_timers(self, keys: list[TimerKey], out: Sent) -> None:
        """Purge timer keys with the step's other purges (fired timers, once absorbed)."""
        for key in keys:
            out.purge(functools.partial(self._timers.forget, key))

    async def _perform_one(self, ref: ExecutionRef, effect: Effect, out: Sent) -> None:
        match effect:
            case StartAttempt():
                await self._start_attempt(ref, effect, out, None)
            case PauseAttempt():
                await self._pause_attempt(ref, effect, out)
            case CloseActivity():
                await self._close_activity(ref, effect, out)
            case StartTimer():
                out.append(await self._timers.put(self._key(ref, effect.timer), effect.fire_at))
            case CancelTimer():
                out.purge(functools.partial(self._timers.forget, self._key(ref, effect.timer)))
            case UpdateIndex():
                out.append(await self._update_index(ref, effect))
            case ObserveActivity():
                await self._observe(ref, effect, out)
            case StartChild():
                out.append(await self._start_child(ref, effect))
            case CancelChild():
                message = CancelWorkflow(reason=f"parent {ref.execution_id} cancelled")
                out.append(
                    await self._send(
                        effect.execution_id,
                        message,
                        msg_id=f"cancel:{effect.execution_id}:{ref.execution_id}",
                    )
                )
            case NotifyParent():
                out.append(await self._notify_parent(ref, effect))
            case _:
                assert_never(effect)

    def _key(self, ref: ExecutionRef, timer: str) -> TimerKey:
        return TimerKey(ref.partition, ref.execution_id, ref.run, timer)

    # ---------------------------------------------------------------- activities

    async def _start_attempt(
        self,
        ref: ExecutionRef,
        effect: StartAttempt,
        out: Sent,
        hold: HeldAck | None,
        *,
        create_only: bool = False,
        wanted: Callable[[], bool] = lambda: True,
    ) -> None:
        d = effect.decision
        options = d.options
        checkpoint = None
        if effect.carry_from:
            # A retry: it resumes from the activity's checkpoint, and the previous attempt's
            # record goes (its late heartbeats learn from history that it is closed).
            checkpoint = await self._read_checkpoint(ref, d.seq)
            out.purge(functools.partial(self._timers.forget, self._key(ref, effect.carry_from)))
        # No TTL yet: the heartbeat timer starts with the attempt's first heartbeat, which the
        # worker sends when it starts the attempt, so time spent queued is not silence.
        record = ActivityRecord(nonce=d.nonce, heartbeat=options.heartbeat, observed=effect.observed())
        task = self._activity_task(ref, effect, checkpoint)
        # The start-to-close timeout is not armed here: the runtime that starts the attempt
        # arms it then (actors/attempt_timers.py), so time queued is not counted against it.
        if create_only:
            # A redo: the record may be armed by a worker already; only a missing one is put.
            put = self._put_record(ref, record_timer(d.seq, d.attempt), record, ttl=None, create_only=True)
            out.append(await put)
            out.append(await self._publish_work(ref, task, recheck=True))
        elif options.heartbeat is not None:
            # Its first heartbeat comes at once and needs the record: store that first.
            out.append(await self._put_record(ref, record_timer(d.seq, d.attempt), record, ttl=None))
            await self._arm_schedule_to_start(ref, effect, out)
            out.append(await self._publish_work(ref, task))
        elif hold is None or not self._start_eager(ref, effect, hold, task, record, wanted):
            # The ordinary way (also an eager attempt of a runtime that is stopping). The timer
            # the starting runtime cancels goes before the work item, which is the only other
            # write on the critical path.
            await self._arm_schedule_to_start(ref, effect, out)
            out.append(await self._publish_work(ref, task))
            out.append(await self._put_record(ref, record_timer(d.seq, d.attempt), record, ttl=None))
        if d.attempt == 1 and options.schedule_to_close is not None:
            key = self._key(ref, schedule_to_close_timer(d.seq))
            out.append(await self._timers.put(key, effect.time + options.schedule_to_close))

    def _start_eager(
        self,
        ref: ExecutionRef,
        effect: StartAttempt,
        hold: HeldAck,
        task: ActivityTask,
        record: ActivityRecord,
        wanted: Callable[[], bool],
    ) -> bool:
        """Start the attempt here and now (local_activities), writing its record and timeout
        only if it needs them (actors/eager_keys.py): its timeout is armed in memory. False
        if this runtime has no activity host, no free slot any more, or it is stopping."""
        if self.local is None:
            return False
        d = effect.decision
        timeout, armed, fire_at = None, None, 0.0
        if d.options.timeout is not None:
            key, fire_at = self._key(ref, timeout_timer(d.seq, d.attempt)), time.time() + d.options.timeout
            timeout, armed = functools.partial(self._timers.put, key, fire_at), key
        put_record = functools.partial(self._put_record, ref, record_timer(d.seq, d.attempt), ttl=None)
        bare = d.attempt == 1 and d.options.schedule_to_close is None
        keys = self.local.keys_for(task, record, put_record, timeout, armed=armed, bare=bare)
        if not self.local.start(task, ref.partition, hold, keys, wanted):
            return False
        if armed is not None:
            self._timers.arm(armed, fire_at)
        return True

    async def _arm_schedule_to_start(self, ref: ExecutionRef, effect: StartAttempt, out: Sent) -> None:
        """Time in the queue: the runtime that starts the attempt cancels this timer."""
        d = effect.decision
        if d.options.schedule_to_start is not None:
            key = self._key(ref, schedule_to_start_timer(d.seq, d.attempt))
            out.append(await self._timers.put(key, effect.time + d.options.schedule_to_start))

    def _activity_task(
        self, ref: ExecutionRef, effect: StartAttempt, checkpoint: msgspec.Raw | None
    ) -> ActivityTask:
        d = effect.decision
        token = encode_token(TokenData(ref.execution_id, ref.run, d.seq, d.attempt, d.nonce))
        task = ActivityTask(
            execution_id=ref.execution_id,
            workflow=ref.workflow,
            run=ref.run,
            seq=d.seq,
            attempt=d.attempt,
            name=d.name,
            input=d.input,
            nonce=d.nonce,
            token=token,
            options=d.options,
            checkpoint=checkpoint or NULL,
            scheduled_at=effect.time,
        )
        return task

    async def _publish_work(
        self, ref: ExecutionRef, task: ActivityTask, *, recheck: bool = False
    ) -> asyncio.Future[Any]:
        # A redone or recovered attempt may meanwhile have been concluded by another holder
        # of the execution: the worker asks history before running it (actors/attempt_gate.py).
        base = {RECHECK_HEADER: "1"} if recheck else None
        return await self._conn.publish_nowait(
            self._names.work(task.name),
            await self._sealer.encode(task, ref.execution_id),
            headers=tracing.headers(base),  # the step's trace context, to the attempt (runtime/tracing.py)
            msg_id=f"{ref.execution_id}:{ref.run}:a:{task.seq}:{task.attempt}",
        )

    async def _pause_attempt(self, ref: ExecutionRef, effect: PauseAttempt, out: Sent) -> None:
        """The failed attempt's keys go (its timers, liveness key and record, in one purge);
        the back-off timer starts. Its checkpoint stays in the activity's checkpoint key
        (``CHECKPOINT_TTL``, 30 days) for the next attempt."""
        seq, failed = effect.seq, effect.failed_attempt
        key = self._key(ref, attempt_prefix(seq, failed))
        eager = self._close_eager(ref, seq, failed)
        if eager is not None and not eager.written:
            self._forget_unwritten(eager)
        else:
            out.purge(functools.partial(self._forget_activity, key, attempt_timers(seq, failed), eager))
        out.append(await self._timers.put(self._key(ref, effect.retry_timer), effect.fire_at))

    async def _close_activity(self, ref: ExecutionRef, effect: CloseActivity, out: Sent) -> None:
        """Every key of the activity goes in one purge: its attempts' records, its timers and
        its checkpoint. Late heartbeats find no record and learn from history that it closed."""
        seq, attempt = effect.seq, effect.attempt
        eager = self._close_eager(ref, seq, attempt)
        if eager is not None and eager.bare and not eager.written:
            self._forget_unwritten(eager)  # and its activity has no other key: none to purge
            return
        armed = [*attempt_timers(seq, attempt), schedule_to_close_timer(seq), retry_timer(seq, attempt)]
        out.purge(
            functools.partial(self._forget_activity, self._key(ref, activity_prefix(seq)), armed, eager)
        )

    def _close_eager(self, ref: ExecutionRef, seq: int, attempt: int) -> EagerKeys | None:
        """An attempt the execution no longer wants: if it runs (or ran) eagerly here, it
        writes no key from now on (a late one would outlive the purge), and says if it wrote any."""
        if self.local is None:
            return None
        return self.local.close(attempt_id(ref.execution_id, ref.run, seq, attempt))

    def _forget_unwritten(self, eager: EagerKeys) -> None:
        """An eager attempt that wrote no key: nothing to purge, only its timeout to disarm."""
        if eager.armed is not None:
            self._timers.forget_in_memory(eager.armed.key())

    async def _forget_activity(
        self, key: TimerKey, armed: list[str], eager: EagerKeys | None
    ) -> asyncio.Future[int]:
        if eager is not None:
            await eager.settled()  # the purge must not overtake the eager attempt's own writes
        return await self._timers.forget_activity(key, armed)

    async def _observe(self, ref: ExecutionRef, effect: ObserveActivity, out: Sent) -> None:
        """Mark the open attempt's record as observed (if the attempt started in an earlier step)."""
        eager = (
            self.local.keys_of(attempt_id(ref.execution_id, ref.run, effect.seq, effect.attempt))
            if self.local
            else None
        )
        if eager is not None:
            if eager.observe():
                return  # an eager attempt's record, not written yet, will be written flagged
            await eager.settled()  # written, or on its way: read it once it is stored
        timer = record_timer(effect.seq, effect.attempt)
        key = self._key(ref, timer).key()
        stored = await self._records.get(key)
        if stored is None or not stored.is_value:
            return  # its StartAttempt is in flight in this same step, and carries the flag
        record = codec.activity_record.decode(stored.data)
        if record.observed or record.closed:
            return
        updated = msgspec.structs.replace(record, observed=True)
        out.append(
            await self._records.put_nowait(
                key, codec.encode(updated), ttl=record.heartbeat, revision=stored.seq
            )
        )

    # ------------------------------------------------------------------ children

    async def _send(
        self, execution_id: str, message: Any, *, msg_id: str, headers: dict[str, str] | None = None
    ) -> asyncio.Future[Any]:
        return await self._conn.publish_nowait(
            self._names.inbox(execution_id),
            await self._sealer.encode(message, execution_id),
            msg_id=msg_id,
            headers=headers,
        )

    async def _start_child(self, ref: ExecutionRef, effect: StartChild) -> asyncio.Future[Any]:
        d = effect.decision
        message = StartWorkflow(
            workflow=d.workflow,
            input=d.input,
            parent=ref.execution_id,
            parent_run=effect.parent_run,
            parent_seq=d.seq,
        )
        # The step's trace context: the child's run records it, its steps join the parent's trace.
        headers = tracing.headers()
        return await self._send(d.execution_id, message, msg_id=f"start:{d.execution_id}", headers=headers)

    async def _notify_parent(self, ref: ExecutionRef, effect: NotifyParent) -> asyncio.Future[Any]:
        message = ChildResult(
            run=effect.parent_run,
            seq=effect.parent_seq,
            status=effect.status,
            result=effect.result or NULL,
            error=effect.error,
        )
        return await self._send(effect.parent, message, msg_id=f"{ref.execution_id}:{ref.run}:closed")

    async def _put_record(
        self,
        ref: ExecutionRef,
        timer: str,
        record: ActivityRecord,
        *,
        ttl: float | None,
        create_only: bool = False,
        revision: int | None = None,
    ) -> asyncio.Future[Any]:
        key, data = self._key(ref, timer).key(), await self._sealer.encode(record, ref.execution_id)
        if not create_only:
            return await self._records.put_nowait(key, data, ttl=ttl, revision=revision)
        sent = await self._records.put_nowait(key, data, ttl=ttl, revision=0)
        return asyncio.ensure_future(_unless_present(sent))  # awaited by Sent.finish, with the step

    async def read_record(self, ref: ExecutionRef, timer: str) -> ActivityRecord | None:
        stored = await self._records.get(self._key(ref, timer).key())
        if stored is None or not stored.is_value:
            return None
        try:
            return codec.activity_record.decode(stored.data)
        except msgspec.DecodeError:
            return None

    async def _read_checkpoint(self, ref: ExecutionRef, seq: int) -> msgspec.Raw | None:
        stored = await self._records.get(self._key(ref, checkpoint_key(seq)).key())
        if stored is None or not stored.is_value or stored.data == b"null":
            return None
        return msgspec.Raw(stored.data)

    # --------------------------------------------------------------------- index

    async def _update_index(self, ref: ExecutionRef, effect: UpdateIndex) -> asyncio.Future[Any]:
        record = ExecutionRecord(
            execution_id=ref.execution_id,
            workflow=ref.workflow,
            status=effect.status,
            run=ref.run,
            started_at=ref.started_at,
            closed_at=time.time() if effect.status != "RUNNING" else None,
            result=effect.result or NULL,
            error=effect.error,
            history_length=ref.history_length,
        )
        return await self._index.put_nowait(
            ref.execution_id, await self._sealer.encode(record, ref.execution_id)
        )

    async def mark_blocked(
        self,
        ref: ExecutionRef,
        message: str,
        *,
        code: str = "workflow.nondeterministic",
        kind: str = "NonDeterminismError",
    ) -> None:
        error = ErrorInfo(code=code, message=message, type=kind, retryable=False)
        await (await self._update_index(ref, UpdateIndex("BLOCKED", error=error)))


async def _unless_present(sent: asyncio.Future[Any]) -> None:
    """A create-only put: the key being there already (or its marker) is success."""
    with contextlib.suppress(HistoryConflict):
        await sent
