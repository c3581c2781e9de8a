"""HistoryLog: one execution's history subject, read and appended with optimistic concurrency.

Every append carries ``Nats-Expected-Last-Subject-Sequence`` (the last step this writer saw):
a conflict (``HistoryConflict``) means another owner wrote, and the caller reloads and decides
again. Runs after a continue-as-new or an id reuse share the subject; the steps before the
current run's first step are purged once it is appended (``purge_before``), and a crash in
between is finished by the next ``load``.

A step that does not decode makes the history unreadable (``HistoryUnreadable``: the
execution is BLOCKED, actors/blocked.py), unless the last step ended the run while it was
BLOCKED (``HistoryStep.ended_blocked``): that run loads as closed, without replaying it.

Payloads are sealed on append and opened on load (runtime/payload_seal.py: large ones live in
the object store, encrypted ones are decrypted): steps in memory always hold plain payloads.
A payload that cannot be read back (its object gone, no key) makes the history unreadable.
Purging older runs deletes the objects only they referenced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from perdure.runtime import codec
from perdure.runtime.errors import HistoryConflict, HistoryUnreadable, InvalidPayload, PayloadUnreadable
from perdure.runtime.events import HistoryStep, WorkflowStarted
from perdure.runtime.naming import Names
from perdure.runtime.nats_admin import purge_subject
from perdure.runtime.nats_client import Ack, Connection, StoredMessage
from perdure.runtime.payload_seal import REF_PREFIX, sealer_for

from .metrics import RuntimeMetrics

RESEND_AFTER = 1.0  # seconds without an answer before an append is sent again (then every 2 s)
RESEND_FOR = 15.0  # seconds an append is sent again: elections took 5 to 12 s in the cluster tests


@dataclass(frozen=True, slots=True)
class CurrentRun:
    """The current run's steps, oldest first; ``started`` is its first input."""

    steps: list[HistoryStep]
    started: WorkflowStarted


@dataclass(frozen=True, slots=True)
class EndedBlocked:
    """The run was terminated while BLOCKED (``last.ended_blocked``): closed, never replayed
    (its code cannot replay it); ``stored`` is the subject as read (earlier steps may not decode)."""

    stored: list[StoredMessage]
    last: HistoryStep


class HistoryLog:
    """Reads and appends ``history.<execution>``; remembers the last sequence and step time."""

    __slots__ = (
        "_conn",
        "_execution_id",
        "_has_refs",
        "_metrics",
        "_sealer",
        "_stream",
        "_subject",
        "last_seq",
        "last_time",
    )

    def __init__(
        self, conn: Connection, names: Names, execution_id: str, metrics: RuntimeMetrics | None = None
    ) -> None:
        self._conn = conn
        self._metrics = metrics
        self._execution_id = execution_id
        self._stream = names.history_stream
        self._subject = names.history(execution_id)
        self._sealer = sealer_for(conn, names)
        self._has_refs = False  # whether a step seen here references an offloaded payload
        self.last_seq = 0  # 0: expect no history at all (a new execution)
        self.last_time = 0.0

    def reset(self) -> None:
        """Forget what was read: the next append expects an empty subject unless ``load``
        runs. (``last_time`` stays: workflow time never goes back.)"""
        self.last_seq = 0

    async def load(self) -> CurrentRun | EndedBlocked | None:
        """The current run (older runs' steps purged if a crash left them), or None if the
        execution has no history. Raises ``HistoryUnreadable`` if a step does not decode."""
        stored = await self._conn.read_subject(self._stream, self._subject)
        if not stored:
            return None
        what = f"history of {self._execution_id}"
        self._has_refs = any(REF_PREFIX in s.data for s in stored)
        last = _last_step(stored)
        if last is not None and last.ended_blocked:
            self.last_seq, self.last_time = stored[-1].seq, last.time
            return EndedBlocked(stored, last)
        try:
            steps = [await self._sealer.decode(codec.history_step, s.data, what=what) for s in stored]
        except (InvalidPayload, PayloadUnreadable) as exc:
            raise HistoryUnreadable(f"{what}: {exc.message}") from None
        first = last_run_start(steps)
        if first > 0:
            # A new run began but the old run's steps were not purged yet (crash in between).
            await self.purge_before(stored[first].seq)
            steps = steps[first:]
        started = steps[0].inputs[0] if steps[0].inputs else None
        if not isinstance(started, WorkflowStarted):
            raise HistoryUnreadable(f"history of {self._execution_id} does not begin with workflow.started")
        self.last_seq, self.last_time = stored[-1].seq, steps[-1].time
        return CurrentRun(steps, started)

    async def is_current(self) -> bool:
        """Whether no other writer appended since the last step seen here: an actor that
        answers without appending (a refusal) checks it first, since a stale actor (its
        partition was held elsewhere meanwhile) would refuse from an old state, e.g. a token
        for an activity scheduled by the other holder (issue 10: ``token.invalid``)."""
        stored = await self._conn.get_last(self._stream, self._subject)
        return (stored.seq if stored is not None else 0) == self.last_seq

    async def require_current(self, needed: bool = True) -> None:
        """Raise ``HistoryConflict`` (the actor reloads and redoes its step) if ``needed``
        and another writer appended meanwhile: said before answering refusals."""
        if needed and not await self.is_current():
            raise HistoryConflict(f"history of {self._execution_id} moved on: refusals wait for a reload")

    async def append(self, step: HistoryStep) -> int:
        """Append ``step`` after the last one seen; raises ``HistoryConflict`` if another
        writer appended meanwhile. Returns the step's stream sequence."""
        data = await self._sealer.encode(step, self._execution_id)
        try:
            ack = await self._send(data)
        except HistoryConflict:
            if self._metrics is not None:
                self._metrics.conflicts.inc()
            raise
        if self._metrics is not None:
            self._metrics.appends.inc()
        self.last_seq, self.last_time = ack.seq, step.time
        if REF_PREFIX in data:
            self._has_refs = True
        return ack.seq

    async def _send(self, data: bytes) -> Ack:
        """Publish the step with the expected last sequence; sent again while unanswered (after
        1 s, then every 2 s for 15 s: runtime/publish_resend.py), since an append in flight to a
        stream leader that dies is never answered, and waiting out the 10 s ack timeout held
        the execution that long after a new leader was elected."""
        return await self._conn.publish_resent(
            self._subject,
            data,
            expected_last_subject_seq=self.last_seq,
            resend_after=RESEND_AFTER,
            resend_for=RESEND_FOR,
        )

    async def purge_before(self, seq: int) -> None:
        """Drop every step stored before stream sequence ``seq`` (older runs), and the payload
        objects only those steps referenced (read first only if a step seen here has one)."""
        stored = await self._conn.read_subject(self._stream, self._subject) if self._has_refs else []
        await purge_subject(self._conn, stream=self._stream, subject=self._subject, keep_from_seq=seq)
        dropped = [s.data for s in stored if s.seq < seq and REF_PREFIX in s.data]
        if dropped:
            kept = [s.data for s in stored if s.seq >= seq and REF_PREFIX in s.data]
            await self._sealer.drop_unreferenced(dropped, kept)


def last_run_start(steps: Sequence[HistoryStep]) -> int:
    """Index of the step that started the current run (the last ``workflow.started``)."""
    for index in range(len(steps) - 1, -1, -1):
        inputs = steps[index].inputs
        if inputs and isinstance(inputs[0], WorkflowStarted):
            return index
    return 0


def _last_step(stored: Sequence[StoredMessage]) -> HistoryStep | None:
    try:
        return codec.history_step.decode(stored[-1].data)
    except msgspec.DecodeError:
        return None
