"""RedoLedger: which inbox messages each history step absorbed, and each step's effects.

An inbox message is acked only after the step that absorbs it is appended *and* its effects
are sent. A crash in between (or a partition moving) delivers the message again; the ledger
recognises it (``step_of``) and says which steps' effects must be performed again
(``covered_by``): the step that absorbed it, and the steps right after it that absorbed no
inbox message (eager outcomes only), whose effects were covered by that message's held ack
alone. Bounded: only the latest steps are kept, which is where a redelivery lands.

What is performed again is what is still due (``due_again``): the effects were derived when
the step was decided, and history may have moved on since. An attempt that history shows
closed or superseded is not started again (it would run a finished activity once more, and
re-put a purged record without a TTL); a retry's back-off is not re-armed once the retry
began; the executions index is re-put only from the latest step that wrote it, so an old
``RUNNING`` never overwrites ``COMPLETED``. Re-putting a timer that already fired is left
alone: its firing is declined and its key purged (``inbox_translation``, ``step_inputs``).

Pure bookkeeping (no I/O), filled by the execution actor when it appends or replays a step.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Protocol

from .effects import Effect, ObserveActivity, PauseAttempt, StartAttempt, UpdateIndex

KEPT_STEP_EFFECTS = 64
KEPT_ABSORBED = 4096
NEW_RUN = -1  # absorbed by the first step of a later run: nothing to redo


class AttemptView(Protocol):
    """What ``due_again`` reads of an activity (``activity_machine.ActivityState``)."""

    @property
    def attempt(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def waiting_retry(self) -> bool: ...


class RedoLedger:
    __slots__ = ("_absorbed", "_effects", "_kept_absorbed", "_kept_effects")

    def __init__(self, *, kept_effects: int = KEPT_STEP_EFFECTS, kept_absorbed: int = KEPT_ABSORBED) -> None:
        self._absorbed: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._effects: collections.OrderedDict[int, list[Effect]] = collections.OrderedDict()
        self._kept_effects = kept_effects
        self._kept_absorbed = kept_absorbed

    def remember(self, step_index: int, absorbed: Sequence[int], effects: list[Effect]) -> None:
        """Step ``step_index`` absorbed the inbox messages ``absorbed`` (stream seqs) and
        implies ``effects``."""
        for seq in absorbed:
            self._absorbed[seq] = step_index
        while len(self._absorbed) > self._kept_absorbed:
            self._absorbed.popitem(last=False)
        self._effects[step_index] = effects
        while len(self._effects) > self._kept_effects:
            self._effects.popitem(last=False)

    def absorbed_by_new_run(self, seq: int) -> None:
        """A start (id reuse) began a new run: a redelivery needs no effects redone, the new
        run's first step has them."""
        self._absorbed[seq] = NEW_RUN

    def step_of(self, seq: int) -> int | None:
        """The step that absorbed inbox message ``seq`` (``NEW_RUN`` for a new run's start),
        or None if no known step did."""
        return self._absorbed.get(seq) if seq else None

    def covered_by(self, step_index: int) -> list[int]:
        """``step_index`` and the steps right after it that absorbed no inbox message."""
        if step_index == NEW_RUN:
            return []
        absorbing = set(self._absorbed.values())
        covered = [step_index]
        while (following := covered[-1] + 1) in self._effects and following not in absorbing:
            covered.append(following)
        return covered

    def plan(self, seqs: Sequence[int]) -> tuple[set[int], list[int]]:
        """For a batch's inbox sequences: which were absorbed already (duplicates), and the
        steps whose effects to redo for them, in order, each once."""
        duplicates: set[int] = set()
        steps: list[int] = []
        for seq in seqs:
            step_index = self.step_of(seq)
            if step_index is None:
                continue
            duplicates.add(seq)
            steps.extend(i for i in self.covered_by(step_index) if i not in steps)
        return duplicates, steps

    def effects_of(self, step_index: int) -> list[Effect]:
        return self._effects.get(step_index, [])

    def latest_index_step(self) -> int | None:
        """The latest known step that wrote the executions index (its value is current)."""
        writers = [i for i, fx in self._effects.items() if any(isinstance(e, UpdateIndex) for e in fx)]
        return max(writers, default=None)

    def clear(self) -> None:
        self._absorbed.clear()
        self._effects.clear()


def due_again(
    effects: list[Effect], activities: Mapping[int, AttemptView], *, index_current: bool
) -> list[Effect]:
    """The effects of a redone step that history has not made stale since (see above).
    ``index_current``: this step's index update is the latest one."""
    return [e for e in effects if _still_due(e, activities, index_current)]


def _still_due(effect: Effect, activities: Mapping[int, AttemptView], index_current: bool) -> bool:
    match effect:
        case StartAttempt():
            state = activities.get(effect.decision.seq)
            return _current(state, effect.decision.attempt)
        case ObserveActivity():
            return _current(activities.get(effect.seq), effect.attempt)
        case PauseAttempt():
            state = activities.get(effect.seq)
            return (
                state is not None
                and not state.closed
                and state.waiting_retry
                and state.attempt == effect.failed_attempt + 1
            )
        case UpdateIndex():
            return index_current
        case _:
            return True  # purges, timers, messages with a Nats-Msg-Id: harmless again


def _current(state: AttemptView | None, attempt: int) -> bool:
    """The activity is open and ``attempt`` is the one it runs (not one given up on)."""
    return state is not None and not state.closed and not state.waiting_retry and state.attempt == attempt
