"""RuntimeMetrics: one runtime's Prometheus metrics, served as ``/metrics`` on its health port.

One ``CollectorRegistry`` per ``Worker``, not the process-wide default registry with a
``runtime`` label: a process usually hosts one runtime (``perdure worker``), where a label
would only repeat the instance Prometheus already attaches; tests and embedded users run
several ``Worker``s in one process, and each must count only its own work (two runtimes
registering the same metric names in one registry would collide). The scrape of one
runtime's port shows that runtime, as a scrape is expected to.

Hot path: every call site is one method call that adds to a plain number
(``metric_tallies``: no lock, the event loop is the only writer), turned into Prometheus
metric families at scrape time. Labelled children are created once and kept. Gauges that mirror state
(executions cached, partitions owned) are read at scrape time; the inbox backlog needs a
NATS request per owned partition, and the parked (BLOCKED) executions and messages of the
owned partitions one request to the dead-letter stream, so they too are read at scrape time
(``scrape``), never on the hot path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from perdure.runtime.errors import PerdureError
from perdure.runtime.nats_admin import consumer_pending
from perdure.runtime.nats_client import Connection

from .metric_tallies import Tally, TallyCollector, Timings

# Steps and attempts range from a fraction of a millisecond to minutes.
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Timers fire from memory a few ms late; KV markers up to 250 ms late (DESIGN.md), more when loaded.
_LATENESS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# An attempt that produced no outcome message here: its own deadline expired (the
# workflow's timeout timer reports it), it completes asynchronously through its token,
# it was abandoned (ActivityGone) or closed before it started.
UNREPORTED = "unreported"

# (executions, messages) parked in the given partitions (actors/dead_letters.py).
ParkedReader = Callable[[list[int]], Awaitable[tuple[int, int]]]


class RuntimeMetrics:
    """The metric objects of one runtime, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.steps = Tally("perdure_steps", "Workflow steps run by execution actors")
        self.step_seconds = Timings(
            "perdure_step_seconds",
            "Time of one step: messages taken to effects sent (conflict retries included)",
            _SECONDS,
        )
        self.appends = Tally("perdure_history_appends", "History steps appended")
        self.conflicts = Tally(
            "perdure_history_conflicts", "Appends refused by optimistic concurrency (another owner wrote)"
        )
        self.replays = Counter("perdure_replays", "Executions rebuilt from their history", registry=registry)
        self.replay_seconds = Histogram(
            "perdure_replay_seconds",
            "Time to read and replay an execution's current run",
            buckets=_SECONDS,
            registry=registry,
        )
        self._attempts = Tally(
            "perdure_activity_attempts",
            "Activity attempts run here, by activity and outcome (completed, failed, unreported, cancelled)",
            ("activity", "outcome"),
        )
        self._attempt_seconds = Timings(
            "perdure_activity_attempt_seconds",
            "Duration of activity attempts run here",
            _SECONDS,
            ("activity",),
        )
        self._attempt_children: dict[tuple[str, str], tuple[Tally, Timings]] = {}
        self.heartbeats = Tally(
            "perdure_activity_heartbeats", "Heartbeats sent by activity attempts run here"
        )
        self._timers_fired = Tally(
            "perdure_timers_fired", "Timers fired by this runtime, by path (memory, marker)", ("path",)
        )
        self._fired = {path: self._timers_fired.child(path) for path in ("memory", "marker")}
        self.timer_lateness = Timings(
            "perdure_timer_lateness_seconds",
            "Fired time minus due time of the timers fired from memory",
            _LATENESS,
        )
        registry.register(
            TallyCollector(
                [
                    self.steps,
                    self.step_seconds,
                    self.appends,
                    self.conflicts,
                    self._attempts,
                    self._attempt_seconds,
                    self.heartbeats,
                    self._timers_fired,
                    self.timer_lateness,
                ]
            )
        )
        self._dead_letters = Counter(
            "perdure_dead_letters",
            "Messages taken out of the way (terminated, never redelivered), by reason",
            ("reason",),
            registry=registry,
        )
        self._blocked = Counter(
            "perdure_executions_blocked",
            "Executions this runtime found unable to run and marked BLOCKED, by reason code",
            ("code",),
            registry=registry,
        )
        self._parked = Counter(
            "perdure_messages_parked",
            "Messages of BLOCKED executions parked in the dead-letter stream, by reason code",
            ("code",),
            registry=registry,
        )
        self.resumed = Counter(
            "perdure_executions_resumed",
            "BLOCKED executions whose parked messages this runtime sent back to their inbox",
            registry=registry,
        )
        self._parked_executions = Gauge(
            "perdure_parked_executions",
            "BLOCKED executions with parked messages, in the partitions owned here (read at scrape time)",
            registry=registry,
        )
        self._parked_messages = Gauge(
            "perdure_parked_messages",
            "Messages parked for BLOCKED executions, in the partitions owned here (read at scrape time)",
            registry=registry,
        )
        self._parked_reader: ParkedReader | None = None
        self._backlog = Gauge(
            "perdure_inbox_backlog",
            "Inbox messages not yet delivered, per partition owned here (read at scrape time)",
            ("partition",),
            registry=registry,
        )
        self._cached = Gauge("perdure_executions_cached", "Executions held in memory", registry=registry)
        self._owned = Gauge("perdure_partitions_owned", "Inbox partitions owned", registry=registry)

    # ------------------------------------------------------------------ hot path

    def step_done(self, seconds: float) -> None:
        self.steps.inc()
        self.step_seconds.observe(seconds)

    def replayed(self, seconds: float) -> None:
        self.replays.inc()
        self.replay_seconds.observe(seconds)

    def attempt_ended(self, activity: str, outcome: Any, seconds: float) -> None:
        """``outcome``: the ``ActivityResult`` (ok or not), None (unreported), or
        ``"cancelled"`` (the runtime stopped under it)."""
        if outcome is None:
            label = UNREPORTED
        elif isinstance(outcome, str):
            label = outcome
        else:
            label = "completed" if outcome.ok else "failed"
        children = self._attempt_children.get((activity, label))
        if children is None:
            children = (self._attempts.child(activity, label), self._attempt_seconds.child(activity))
            self._attempt_children[(activity, label)] = children
        children[0].inc()
        children[1].observe(seconds)

    def timer_fired(self, path: str, fire_at: float | None = None) -> None:
        """A timer fired from ``path``; with its due time, its lateness is observed."""
        self._fired[path].inc()
        if fire_at is not None:
            self.timer_lateness.observe(max(0.0, time.time() - fire_at))

    def dead_lettered(self, reason: str, count: int = 1) -> None:
        if count > 0:
            self._dead_letters.labels(reason).inc(count)

    def execution_blocked(self, code: str) -> None:
        self._blocked.labels(code).inc()

    def message_parked(self, code: str) -> None:
        self._parked.labels(code).inc()

    # ------------------------------------------------------------------ scraping

    def watch_parked(self, read: ParkedReader) -> None:
        """``read(partitions)``: (executions, messages) parked in those partitions, at scrape time."""
        self._parked_reader = read

    def watch(self, cached: Callable[[], int], owned: Callable[[], int]) -> None:
        """Gauges read from the worker's state at scrape time."""
        self._cached.set_function(cached)
        self._owned.set_function(owned)

    async def scrape(self, conn: Connection | None, consumers: Sequence[tuple[int, str, str]]) -> bytes:
        """The exposition text, after reading each owned partition's backlog from its
        consumer: ``consumers`` is ``(partition, stream, consumer)`` per owned partition."""
        self._backlog.clear()
        if conn is not None and consumers:
            pending = await asyncio.gather(*(_pending(conn, stream, name) for _, stream, name in consumers))
            for (partition, _, _), count in zip(consumers, pending, strict=True):
                if count is not None:
                    self._backlog.labels(str(partition)).set(count)
        if self._parked_reader is not None:
            await self._read_parked([partition for partition, _, _ in consumers])
        return generate_latest(self.registry)

    async def _read_parked(self, partitions: list[int]) -> None:
        assert self._parked_reader is not None
        try:
            executions, messages = await self._parked_reader(partitions) if partitions else (0, 0)
        except PerdureError:
            return  # NATS unreachable: the last sample stays
        self._parked_executions.set(executions)
        self._parked_messages.set(messages)


async def _pending(conn: Connection, stream: str, name: str) -> int | None:
    try:
        return await consumer_pending(conn, stream=stream, name=name)
    except PerdureError:
        return None  # being recreated (a takeover) or NATS unreachable: no sample this time


__all__ = ["CONTENT_TYPE", "UNREPORTED", "RuntimeMetrics"]
