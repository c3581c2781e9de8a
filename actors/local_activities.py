"""Eager activity attempts: run where the decision was made, without the work-stream hop.

When the runtime that appends an ``ActivityScheduled`` also hosts that activity and has a
free slot, the attempt starts right after the append, in this process, and its outcome goes
straight into the execution actor's mailbox (no work item, no inbox round trip). The history
step that absorbs the outcome is the durable record of it, as for any inbox message.

Crash safety comes from the inbox message(s) of the step that scheduled the attempt: they
stay unacked (kept in progress) until every eager attempt of that step has its outcome in
history (or has none to report: ``make_async()``, its own deadline). If this runtime dies
first, they are redelivered to the partition's next owner, which recognises the step as
absorbed and performs its effects again, the ordinary way: a work item, so the attempt runs
again (activities are at-least-once either way).

Attempts go the ordinary way when the activity is not hosted here, when it heartbeats (a
long-running attempt would hold its inbox message for as long), when every eager slot is
busy, and whenever a step's effects are redone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from perdure.runtime.errors import PerdureError, ScopeClosed
from perdure.runtime.messages import ActivityResult, ActivityTask
from perdure.runtime.nats_consumer import Delivery
from perdure.runtime.supervisor import Supervisor
from perdure.runtime.tokens import TokenData

from .effects import Effect, StartAttempt, record_timer
from .log_context import as_attempt
from .running_attempts import RunningAttempts, attempt_id

if TYPE_CHECKING:
    from .activity_actor import ActivityActor
    from .activity_machine import ActivityState
    from .completion import HeartbeatService
    from .effect_runner import EffectRunner, ExecutionRef

log = structlog.get_logger("perdure.local_activities")

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


Route = Callable[[str, int, LocalResult], None]


class LocalActivities:
    """Starts eager attempts on this runtime's activity actors, within ``slots`` at once."""

    def __init__(
        self,
        actors: dict[str, ActivityActor],
        route: Route,
        spawn: Spawn,
        slots: int,
        heartbeats: HeartbeatService,
        running: RunningAttempts | None = None,
    ) -> None:
        self._actors = actors
        self._heartbeats = heartbeats
        self._route = route
        self._spawn = spawn
        self._free = slots
        # Attempt ids running here (an eager one until its outcome is absorbed), shared
        # with the activity actors: one attempt never runs twice at once in this runtime.
        self._running = running if running is not None else RunningAttempts()

    def reserve(self, name: str, heartbeat: float | None) -> bool:
        """Take a slot for an attempt about to be scheduled (before its step is appended)."""
        if self._free <= 0 or heartbeat is not None or name not in self._actors:
            return False
        self._free -= 1
        return True

    def unreserve(self, count: int) -> None:
        self._free += count

    def is_running(self, attempt_id: str) -> bool:
        """Running here, or its outcome is on its way to the execution actor."""
        return attempt_id in self._running

    def start(
        self,
        task: ActivityTask,
        partition: int,
        hold: HeldAck,
        record_stored: asyncio.Future[Any],
        wanted: Callable[[], bool] = lambda: True,
    ) -> bool:
        """Start a reserved attempt; False (slot given back) if the runtime is stopping.
        ``record_stored`` is the ack of the attempt's record put, sent just before.
        ``wanted`` is asked when the attempt's task first runs: by then the execution may
        have closed the activity (its next step can be appended before a busy loop runs the
        task), and an attempt of a closed activity is not run."""
        attempt_id = _attempt_id(task)
        if not self._running.claim(attempt_id):
            self._free += 1
            return True  # it runs here already: its outcome goes to the inbox as usual
        try:
            run = as_attempt(task, self._run, partition, hold, attempt_id, record_stored, wanted)
            self._spawn(run, f"eager:{attempt_id}")
        except ScopeClosed:  # the activity host stops: the attempt goes the ordinary way
            self._running.release(attempt_id, concluded=False)
            self._free += 1
            return False
        hold.add_attempt()
        return True

    async def _run(
        self,
        task: ActivityTask,
        partition: int,
        hold: HeldAck,
        attempt_id: str,
        record_stored: asyncio.Future[Any],
        wanted: Callable[[], bool],
    ) -> None:
        if not wanted():
            log.info("eager.attempt_withdrawn")
            self._free += 1
            self._running.release(attempt_id)  # nothing to report: the activity is closed
            hold.conclude()
            return
        try:
            outcome = await self._actors[task.name].run_local(task)
        except BaseException:
            self._running.release(attempt_id, concluded=False)
            hold.fail()  # cancelled (runtime stopping) or broken: the next owner redoes it
            raise
        finally:
            self._free += 1
        if outcome is None:
            # Nothing to report: handed over (make_async), or its own deadline passed (the
            # timeout timer reports it). Flag it started first, so that no recovery re-runs it
            # (once its record is stored: the step's writes may still be on their way).
            try:
                await record_stored
                await self._heartbeats.mark_started(
                    TokenData(task.execution_id, task.run, task.seq, task.attempt, task.nonce)
                )
            except PerdureError as exc:
                log.warning("eager.mark_started_failed", error=str(exc))
            self._running.release(attempt_id)
            hold.conclude()
            return
        settled = functools.partial(self._running.release, attempt_id)
        route = functools.partial(self._route, task.execution_id, partition)
        result = LocalResult(outcome, hold, f"local:{task.name}", settled, self._redeliver(route))
        route(result)

    @staticmethod
    def _redeliver(route: Callable[[LocalResult], None]) -> Callable[[LocalResult, float], None]:
        def redeliver(result: LocalResult, delay: float) -> None:
            asyncio.get_running_loop().call_later(delay, route, result)

        return redeliver


class EagerSteps:
    """One execution's eager bookkeeping: the slots a step reserves for the attempts it will
    start here (before the append that records them), and the hold of the step under way.

    A step's hold (``HeldAck``) keeps its inbox messages unacked until its eager attempts'
    outcomes are in history; the actor takes it (``take_hold``) to settle or abandon it.
    """

    __slots__ = ("_hold", "_local", "_spawn")

    def __init__(self, local: LocalActivities | None, spawn: Spawn) -> None:
        self._local = local
        self._spawn = spawn
        self._hold: HeldAck | None = None

    def reserve(self, effects: list[Effect]) -> list[int]:
        """Activities whose new attempt will run here at once (slots taken now)."""
        local = self._local
        if local is None:
            return []
        return [
            effect.decision.seq
            for effect in effects
            if isinstance(effect, StartAttempt)
            and local.reserve(effect.decision.name, effect.decision.options.heartbeat)
        ]

    def unreserve(self, eager: list[int]) -> None:
        """The step was not appended: give its slots back."""
        if self._local is not None and eager:
            self._local.unreserve(len(eager))

    def hold_for(self, batch: Sequence[Delivery | LocalResult]) -> HeldAck:
        """Whose acks wait for this step's eager attempts. A step that only absorbed outcomes
        of one hold's attempts adds its own to that hold (a chain of eager attempts stays
        under its first message's hold, however long); otherwise a new hold (taken by
        ``take_hold``) carries this step's inbox messages and the outcomes' holds."""
        inbox = [d for d in batch if isinstance(d, Delivery)]
        parents = [d.hold for d in batch if isinstance(d, LocalResult)]
        if not inbox and parents and all(p is parents[0] for p in parents):
            return parents[0]  # the outcomes are acked with the step, after its attempts joined
        self._hold = HeldAck(inbox, parents, self._spawn)
        return self._hold

    def take_hold(self) -> HeldAck | None:
        hold, self._hold = self._hold, None
        return hold


def started_attempts(effects: list[Effect], seqs: list[int]) -> dict[int, StartAttempt]:
    """The ``StartAttempt`` effects of the activities ``seqs`` (a step's ``eager`` list)."""
    return {
        effect.decision.seq: effect
        for effect in effects
        if isinstance(effect, StartAttempt) and effect.decision.seq in seqs
    }


async def recover_eager(
    eager: dict[int, StartAttempt],
    activities: Mapping[int, ActivityState],
    ref: ExecutionRef,
    effects: EffectRunner,
) -> list[int]:
    """After a replay: attempts that started eagerly in the runtime that wrote them and are
    still open. Unless one runs here, that runtime is gone (or forgot them), so their work
    items go out now (the ``Nats-Msg-Id`` of each makes a second copy harmless). Returns the
    activities whose attempts were sent."""
    local = effects.local
    lost = []
    for seq, effect in eager.items():
        state = activities.get(seq)
        attempt = effect.decision.attempt
        if state is None or state.closed or state.waiting_retry or state.attempt != attempt:
            continue
        if local is not None and local.is_running(attempt_id(ref.execution_id, ref.run, seq, attempt)):
            continue
        record = await effects.read_record(ref, record_timer(seq, attempt))
        if record is not None and record.started:
            continue  # handed over with make_async(): its token holder finishes it
        lost.append(effect)
    if lost:
        # As a redo: its record is kept if present, and its work item says "ask history
        # first" (another holder of the partition may be absorbing its outcome right now).
        await effects.redo(ref, list(lost))
    return [e.decision.seq for e in lost]


def _attempt_id(task: ActivityTask) -> str:
    return attempt_id(task.execution_id, task.run, task.seq, task.attempt)


def spawner(supervisor: Supervisor) -> Spawn:
    """A scope's ``spawn`` as a plain ``(coroutine, name)`` callable (raises ``ScopeClosed``)."""
    return lambda coro, name: supervisor.spawn(coro, name=name)
