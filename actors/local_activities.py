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
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import structlog

from perdure.runtime.errors import PerdureError, ScopeClosed
from perdure.runtime.messages import ActivityRecord, ActivityTask
from perdure.runtime.nats_consumer import Delivery
from perdure.runtime.supervisor import Supervisor
from perdure.runtime.tokens import TokenData

from .eager_keys import EagerKeys, PutRecord, Write
from .effects import Effect, StartAttempt, record_timer
from .held_ack import HeldAck, LocalResult, Spawn
from .log_context import as_attempt
from .running_attempts import RunningAttempts, attempt_id

if TYPE_CHECKING:
    from .activity_actor import ActivityActor
    from .activity_machine import ActivityState
    from .completion import HeartbeatService
    from .effect_runner import EffectRunner, ExecutionRef
    from .timers import TimerKey

log = structlog.get_logger("perdure.local_activities")


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
        # The keys of the eager attempts started here, until their outcome is acked: closing
        # the activity asks them whether anything was written (actors/eager_keys.py).
        self._keys: dict[str, EagerKeys] = {}

    def may_run(self, name: str, heartbeat: float | None) -> bool:
        """Whether an attempt of ``name`` may run here eagerly: hosted here, no heartbeat, and
        a slot free now. Asked before its step is appended; the slot is taken only when it
        starts (``start``), after the append: a burst of steps waiting for their appends holds
        no slot, so quick attempts do not spill to the work stream for want of one (measured:
        with 100 workflows started at once, 30% of their attempts went the ordinary way when
        the slot was taken before the append)."""
        return self._free > 0 and heartbeat is None and name in self._actors

    def is_running(self, attempt_id: str) -> bool:
        """Running here, or its outcome is on its way to the execution actor."""
        return attempt_id in self._running

    def start(
        self,
        task: ActivityTask,
        partition: int,
        hold: HeldAck,
        keys: EagerKeys,
        wanted: Callable[[], bool] = lambda: True,
    ) -> bool:
        """Start an attempt of a ``may_run`` activity in a free slot; False if none is free
        any more or the runtime is stopping (the attempt then goes the ordinary way).
        ``keys`` writes its record and timeout if it needs them. ``wanted`` is asked when the
        attempt's task first runs: by then the execution may have closed the activity (its
        next step can be appended before a busy loop runs the task), and an attempt of a
        closed activity is not run."""
        if self._free <= 0:
            return False  # every slot was taken since its step was appended: the ordinary way
        attempt_id = _attempt_id(task)
        if not self._running.claim(attempt_id):
            return True  # it runs here already: its outcome goes to the inbox as usual
        self._free -= 1
        try:
            run = as_attempt(task, self._run, partition, hold, attempt_id, keys, wanted)
            self._spawn(run, f"eager:{attempt_id}")
        except ScopeClosed:  # the activity host stops: the attempt goes the ordinary way
            self._running.release(attempt_id, concluded=False)
            self._free += 1
            return False
        self._keys[attempt_id] = keys
        hold.add_attempt()
        return True

    def keys_for(
        self,
        task: ActivityTask,
        record: ActivityRecord,
        put_record: PutRecord,
        put_timeout: Write | None,
        *,
        armed: TimerKey | None,
        bare: bool,
    ) -> EagerKeys:
        """The keys an eager attempt writes if it needs them (actors/eager_keys.py)."""
        token = TokenData(task.execution_id, task.run, task.seq, task.attempt, task.nonce)
        mark_started = functools.partial(self._heartbeats.mark_started, token)
        return EagerKeys(
            _attempt_id(task),
            record,
            put_record,
            put_timeout,
            mark_started,
            self._spawn,
            armed=armed,
            bare=bare,
        )

    def close(self, attempt_id: str) -> EagerKeys | None:
        """The activity of an attempt closes: if it ran eagerly here, its keys, closed (none
        is written from now on; ``EagerKeys.written`` says whether one was)."""
        keys = self._keys.pop(attempt_id, None)
        if keys is not None:
            keys.close()
        return keys

    def keys_of(self, attempt_id: str) -> EagerKeys | None:
        """The keys of an eager attempt running here (until its outcome is acked)."""
        return self._keys.get(attempt_id)

    def _settled(self, attempt_id: str, concluded: bool = True) -> None:
        """The attempt no longer runs here: its outcome is in history (its activity closed,
        or not, with the step's effects, which are sent by now), dropped, handed over, or
        there is none; ``concluded``: as ``RunningAttempts.release`` says."""
        self._running.release(attempt_id, concluded)
        self._keys.pop(attempt_id, None)

    async def _run(
        self,
        task: ActivityTask,
        partition: int,
        hold: HeldAck,
        attempt_id: str,
        keys: EagerKeys,
        wanted: Callable[[], bool],
    ) -> None:
        if not wanted():
            log.info("eager.attempt_withdrawn")
            self._free += 1
            self._settled(attempt_id)  # nothing to report: the activity is closed
            hold.conclude()
            return
        try:
            outcome = await self._actors[task.name].run_local(task, keys)
        except BaseException:
            self._settled(attempt_id, concluded=False)  # its keys, if any, are purged the ordinary way
            hold.fail()  # cancelled (runtime stopping) or broken: the next owner redoes it
            raise
        finally:
            self._free += 1
        if outcome is None:
            # Nothing to report: handed over (make_async), or its own deadline passed. Its
            # record flagged started (no recovery re-runs it) and its timeout timer (which
            # reports it if its token holder does not) are stored before its hold is acked.
            try:
                await keys.hand_over()
            except PerdureError as exc:
                log.warning("eager.mark_started_failed", error=str(exc))
            self._settled(attempt_id)
            hold.conclude()
            return
        settled = functools.partial(self._settled, attempt_id)
        route = functools.partial(self._route, task.execution_id, partition)
        result = LocalResult(outcome, hold, f"local:{task.name}", settled, self._redeliver(route))
        route(result)

    @staticmethod
    def _redeliver(route: Callable[[LocalResult], None]) -> Callable[[LocalResult, float], None]:
        def redeliver(result: LocalResult, delay: float) -> None:
            asyncio.get_running_loop().call_later(delay, route, result)

        return redeliver


class EagerSteps:
    """One execution's eager bookkeeping: which attempts a step is to start here (decided
    before the append that records them), and the hold of the step under way.

    A step's hold (``HeldAck``) keeps its inbox messages unacked until its eager attempts'
    outcomes are in history; the actor takes it (``take_hold``) to settle or abandon it.
    """

    __slots__ = ("_hold", "_local", "_spawn")

    def __init__(self, local: LocalActivities | None, spawn: Spawn) -> None:
        self._local = local
        self._spawn = spawn
        self._hold: HeldAck | None = None

    def eligible(self, effects: list[Effect]) -> list[int]:
        """Activities whose new attempt is to run here at once (``LocalActivities.may_run``),
        recorded in the step; one that finds no free slot when it starts goes the ordinary way."""
        local = self._local
        if local is None:
            return []
        return [
            effect.decision.seq
            for effect in effects
            if isinstance(effect, StartAttempt)
            and local.may_run(effect.decision.name, effect.decision.options.heartbeat)
        ]

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
