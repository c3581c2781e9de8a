"""Worker: one runtime's composition of actors, services and ownership.

    Worker
    ├── PartitionOwnership        leases: which inbox partitions this runtime handles
    ├── PartitionHost (per owned partition, partition_host.py)
    │     inbox consumer ──▶ ExecutionActor (LRU cache, one step at a time per execution)
    ├── TimerService              KV timers + in-memory precise firing, per owned partition
    ├── ActivityActor (per activity name)   work consumer ──▶ run ──▶ inbox
    └── CompletionService         <ns>.api.complete / fail / heartbeat

Every task has an owner (a ``Supervisor`` scope) and a lifetime:

    runtime scope ─┬ ownership, membership, attempt-liveness (critical: their failure stops the runtime)
                   ├ partition:<p> (one per PartitionHost) ── consume, execution:<id>, settle
                   ├ activities (the activity host) ── activities:<name> intake (critical),
                   │                                    activity:/eager: attempts, keepalive, heartbeat
                   ├ timers ── timer:<key> firings
                   └ inbox-acks, inbox-in-progress (a HeldAck spans a partition and the attempts)

``stop()`` hands partitions over gracefully (STYLE rule 14: intake first, in-flight work under
a deadline, then cancel, then close the connection).

Size: about 430 lines: the composition root of a runtime (services, scopes, start and stop).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from perdure.runtime import payload_seal
from perdure.runtime.errors import PerdureError, ScopeClosed
from perdure.runtime.naming import Names
from perdure.runtime.nats_client import Connection
from perdure.runtime.payload_seal import PayloadPolicy
from perdure.runtime.provision import Provisioner
from perdure.runtime.settings import Settings
from perdure.runtime.supervisor import Supervisor

from .activity_actor import ActivityActor
from .attempt_timers import AttemptTimers
from .blocked import BlockedExecutions
from .completion import CompletionService, HeartbeatService
from .dead_letters import DeadLetters
from .effect_runner import EffectRunner
from .execution_actor import ExecutionActor
from .held_ack import LocalResult
from .instance import evict
from .local_activities import LocalActivities, spawner
from .metrics import RuntimeMetrics
from .ownership import PartitionOwnership
from .partition_host import PartitionHost
from .registry import Registry
from .timers import TimerService
from .unhosted_work import UnhostedWork
from .workflow_threads import workflow_threads

log = structlog.get_logger("perdure.worker")

ACTIVITY_GRACE = 2.0  # seconds a stopping runtime gives running activity attempts to finish
PARTITION_SETTLE = 5.0  # seconds a released partition gives its steps under way to finish
CANCEL_FLOOR = 1.0  # seconds cancelled tasks get to end, even when the stop's deadline has passed
EVICT_LOOKAHEAD = 32  # busy actors skipped at the head of the LRU order before giving up


@dataclass(slots=True)
class WorkerServices:
    """What actors share; passed down instead of reaching for globals."""

    conn: Connection
    settings: Settings
    names: Names
    registry: Registry
    supervisor: Supervisor
    effects: EffectRunner
    timers: TimerService
    heartbeats: HeartbeatService
    attempts: AttemptTimers
    metrics: RuntimeMetrics
    blocked: BlockedExecutions  # poison messages: parked in <NS>_DEAD, resumed (actors/blocked.py)


class Worker:
    """Hosts the execution and activity actors of the given workflows and activities.

    ``async with Worker([my_workflow, my_activity], url=...)`` runs it; ``perdure worker``
    does the same from the command line.
    """

    def __init__(
        self,
        items: Iterable[Any] = (),
        *,
        url: str | None = None,
        settings: Settings | None = None,
        registry: Registry | None = None,
        host_workflows: bool = True,
    ) -> None:
        self.settings = settings or Settings.from_env(url=url)
        if url is not None and self.settings.url != url:
            self.settings = Settings(**{**_fields(self.settings), "url": url})
        self.registry = registry or Registry(items)
        self._host_workflows = host_workflows
        self.services: WorkerServices
        self._actors: collections.OrderedDict[str, ExecutionActor] = collections.OrderedDict()
        self._hosts: dict[int, PartitionHost] = {}
        self._ownership: PartitionOwnership | None = None
        self._completion: CompletionService | None = None
        self._activity_intake: list[asyncio.Task[Any]] = []
        self._activities: Supervisor | None = None  # the activity host's scope: intake and attempts
        self._conn: Connection | None = None
        self._stop_deadline: float | None = None  # loop time by which stop() must be done
        self.ready = asyncio.Event()
        self.metrics = RuntimeMetrics()
        self.metrics.watch(lambda: len(self._actors), lambda: len(self._hosts))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        settings = self.settings
        if not settings.url:
            from perdure.runtime.embedded import default_url

            self.settings = Settings(**{**_fields(settings), "url": default_url()})
        assert self.settings.url
        self._stop_deadline = None
        workflow_threads().budget = self.settings.step_budget  # workflow code past it fails its step
        conn = await Connection.connect(
            self.settings.url,
            name=f"perdure-runtime-{self.settings.name}",
            options=self.settings.connect,
            timeout=self.settings.connect_timeout,
        )
        self._conn = conn
        await Provisioner(conn, self.settings).provision()
        names = self.settings.names
        payload_seal.configure(conn, names, PayloadPolicy.of(self.settings))  # how payloads are sealed
        supervisor = Supervisor(f"runtime:{self.settings.name}")
        timers = TimerService(conn, names, self.metrics, scope=supervisor.child("timers"))
        heartbeats = HeartbeatService(conn, names, self.settings.partitions)
        self.services = WorkerServices(
            conn=conn,
            settings=self.settings,
            names=names,
            registry=self.registry,
            supervisor=supervisor,
            effects=EffectRunner(conn, names, timers),
            timers=timers,
            heartbeats=heartbeats,
            attempts=AttemptTimers(conn, names, self.settings.partitions, self.settings.lease_ttl),
            metrics=self.metrics,
            blocked=BlockedExecutions(
                conn, names, self.settings, self.registry, DeadLetters(conn, names, self.metrics)
            ),
        )
        self._completion = CompletionService(conn, names, heartbeats, self.registry, self.holds)
        await self._completion.start()
        activities = self._activities = supervisor.child("activities")
        activity_actors = {
            name: ActivityActor(self.services, definition, activities)
            for name, definition in self.registry.activities.items()
        }
        # Ready when every intake consumer pulls (or the first one that cannot start raises).
        self._activity_intake = list(
            await asyncio.gather(
                *(
                    activities.start(actor.run, name=f"activities:{name}", critical=True)
                    for name, actor in activity_actors.items()
                )
            )
        )
        if activity_actors:
            supervisor.spawn(self.services.attempts.run(), name="attempt-liveness", critical=True)
        if activity_actors and self.settings.eager_activities:
            self.services.effects.local = LocalActivities(
                activity_actors,
                self._route_local,
                spawner(activities),
                self.settings.activity_concurrency,
                heartbeats,
                self.services.effects.running,
            )
        if self._host_workflows and self.registry.workflows:
            self._ownership = PartitionOwnership(
                conn,
                self.settings,
                on_acquire=self._acquire,
                on_release=self._release,
                on_retake=timers.rewatch_partition,
            )
            timers.set_ownership(self._ownership.owns)
            await self._first_tick(self._ownership)
            supervisor.spawn(self._ownership.run(), name="ownership", critical=True)
            supervisor.spawn(self._ownership.keep_membership(), name="membership", critical=True)
        supervisor.spawn(UnhostedWork(conn, names).run(), name="unhosted-work")  # poison: visible
        self.ready.set()
        log.info(
            "runtime.started",
            runtime=self.settings.name,
            url=self.settings.url,
            namespace=self.settings.namespace,
            workflows=sorted(self.registry.workflows),
            activities=sorted(self.registry.activities),
        )

    async def _first_tick(self, ownership: PartitionOwnership) -> None:
        """Claim our partitions before saying we started; a transient failure is retried.

        Right after a replicated bucket is created on a cluster, its subjects may still have
        no responder for a moment ("no JetStream stream stores ..."); a runtime must not exit
        for that. Past ``lease_ttl`` we start anyway: the ownership loop keeps trying.
        """
        deadline = time.monotonic() + self.settings.lease_ttl
        delay = 0.05
        while True:
            try:
                await ownership.tick()
                return
            except PerdureError as exc:
                if time.monotonic() > deadline:
                    log.warning("ownership.not_ready", error=str(exc))
                    return
                log.info("ownership.retry", error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def stop(self, timeout: float = 10.0) -> None:
        """Graceful, within ``timeout`` (STYLE rule 14): hand partitions over (their steps
        finish), stop the API intake, give running attempts their grace, cancel what is left
        (every scope), then close the connection (which drains it)."""
        if self._conn is None:
            return
        self._stop_deadline = asyncio.get_running_loop().time() + timeout
        self.ready.clear()
        services = getattr(self, "services", None)
        if services is None:  # start() failed before it had anything running (e.g. provisioning)
            await self._conn.close()
            self._conn = None
            return
        if self._ownership is not None:
            try:
                await self._ownership.release_all()
            except Exception as exc:
                log.warning("runtime.release_failed", error=str(exc))
        if self._completion is not None:
            await self._completion.stop()
        await self._drain_activities(self._time_left(timeout))
        await services.supervisor.stop(timeout=max(CANCEL_FLOOR, self._time_left(timeout)))
        for execution_id in list(self._actors):
            self._drop(execution_id)
        await services.timers.stop()
        await self._conn.close()
        self._conn = None
        log.info("runtime.stopped", runtime=self.settings.name)

    def _time_left(self, default: float) -> float:
        """Until the stop's deadline (``default`` when not stopping)."""
        if self._stop_deadline is None:
            return default
        return max(0.0, self._stop_deadline - asyncio.get_running_loop().time())

    async def _drain_activities(self, timeout: float) -> None:
        """Take no more work, and give the attempts under way ``ACTIVITY_GRACE`` to finish.

        Cancelled, an attempt that was about to report is retried only when its timeout
        fires (or its work item's ack wait ends); finished, its result is in the inbox. A
        longer attempt is cancelled as before (its heartbeat or timeout moves it elsewhere).
        """
        timeout = min(timeout, ACTIVITY_GRACE)
        intake, self._activity_intake = self._activity_intake, []
        for task in intake:
            task.cancel()
        if intake:
            await asyncio.wait(intake, timeout=timeout)
        activities = self._activities
        if activities is not None and activities.running:
            # What is left in the activity host's scope is its attempts (and their keepalives).
            log.info("runtime.finishing_activities", runtime=self.settings.name, attempts=activities.running)
            await activities.wait_idle(timeout)

    async def kill(self) -> None:
        """Stop without handing anything over (tests: what a crash looks like to the others)."""
        if self._conn is None:
            return
        await self.services.supervisor.stop(timeout=1.0)
        for execution_id in list(self._actors):
            self._drop(execution_id)
        await self.services.timers.stop()
        await self._conn.close()
        self._conn = None

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_failed(self) -> BaseException | None:
        await self.services.supervisor.failed.wait()
        return self.services.supervisor.failure

    # --------------------------------------------------------------- partitions

    @property
    def owned_partitions(self) -> list[int]:
        return sorted(self._hosts)

    async def _acquire(self, partition: int) -> None:
        if partition in self._hosts:
            # Still hosted (a tick failed half-way after its lease lapsed): keep that host, as
            # for a lease taken back. A second one deleted its consumer, each the other's, for ever.
            await self.services.timers.rewatch_partition(partition)
            return
        host = PartitionHost(self, partition, self.services.supervisor.child(f"partition:{partition}"))
        self._hosts[partition] = host
        await host.start()
        # Poison (actors/blocked.py): blocked executions of this partition get their messages back.
        host.scope.spawn(self.services.blocked.resume(partition), name=f"resume:{partition}")

    async def _release(self, partition: int) -> None:
        host = self._hosts.pop(partition, None)
        if host is not None:
            await host.stop(timeout=min(PARTITION_SETTLE, self._time_left(PARTITION_SETTLE)))

    async def still_owns(self, partition: int) -> bool:
        """Whether this runtime's lease on ``partition`` still stands (asks the ownership tick
        to run now if not, which stops the partition's host)."""
        ownership = self._ownership
        if ownership is None:
            return True
        try:
            owned = await ownership.still_owns(partition)
        except PerdureError:
            return True  # cannot tell (NATS unreachable): carry on; the lease decides in the end
        if not owned:
            log.info("partition.taken_over", partition=partition, runtime=self.settings.name)
            ownership.wake()
        return owned

    # ----------------------------------------------------------------- actor cache

    def _route_local(self, execution_id: str, partition: int, result: LocalResult) -> None:
        """An eager attempt's outcome goes to its execution's actor, if the partition is still ours."""
        host = self._hosts.get(partition)
        if host is None or not host.consuming:
            result.drop()  # the partition moved: its next owner redoes the scheduling step
            return
        self.actor(execution_id, partition).deliver(result)

    def actor(self, execution_id: str, partition: int) -> ExecutionActor:
        """The execution's actor, from the cache (LRU over all partitions) or new; a new one
        joins its partition host's actors and spawns its tasks on the host's scope."""
        actor = self._actors.get(execution_id)
        if actor is None:
            host = self._hosts.get(partition)
            if host is None:
                raise ScopeClosed(f"partition {partition} is not hosted by runtime {self.settings.name}")
            actor = ExecutionActor(self.services, execution_id, partition, host.scope, self._forget_dormant)
            self._actors[execution_id] = actor
            host.actors[execution_id] = actor
            self._evict()
        else:
            self._actors.move_to_end(execution_id)
        return actor

    def _forget_dormant(self, actor: ExecutionActor) -> None:
        if self._actors.get(actor.execution_id) is actor:
            self._drop(actor.execution_id)

    def _drop(self, execution_id: str) -> None:
        """Leave the cache and the partition host's actors; the instance is torn down now,
        not by the garbage collector."""
        actor = self._actors.pop(execution_id, None)
        if actor is not None:
            evict(actor.instance)
            host = self._hosts.get(actor.partition)
            if host is not None and host.actors.get(execution_id) is actor:
                del host.actors[execution_id]

    def forget_partition(self, host: PartitionHost) -> None:
        """A stopped partition's actors leave the cache (the next owner replays them)."""
        for execution_id, actor in list(host.actors.items()):
            if self._actors.get(execution_id) is actor:
                self._drop(execution_id)
        host.actors.clear()

    def _evict(self) -> None:
        """Drop the least recently used idle actors beyond ``cache_size``.

        Only the head of the LRU order is looked at (``excess`` plus a few, skipping busy
        actors): this runs for every new actor, and copying the whole cache's keys each time
        (as it did) took 40% of a runtime's CPU with 100,000 executions and a full cache.
        """
        excess = len(self._actors) - self.settings.cache_size
        if excess <= 0:
            return
        head = itertools.islice(self._actors.items(), excess + EVICT_LOOKAHEAD)
        for execution_id in [eid for eid, actor in head if actor.idle][:excess]:
            self._drop(execution_id)

    def holds(self, execution_id: str) -> bool:
        """The execution's instance is in memory here (so the execution exists)."""
        actor = self._actors.get(execution_id)
        return actor is not None and actor.instance is not None

    @property
    def cached_executions(self) -> int:
        """Executions held in memory (dormant and evicted ones are replayed when woken)."""
        return len(self._actors)

    async def scrape_metrics(self) -> bytes:
        """``/metrics``: the Prometheus exposition, with each owned partition's inbox backlog."""
        names = self.settings.names
        consumers = [(p, names.inbox_stream, names.inbox_consumer(p)) for p in self.owned_partitions]
        return await self.metrics.scrape(self._conn, consumers)

    async def wait_quiet(self) -> None:
        """Until every cached execution has finished its steps and their acks."""
        while busy := [a for a in self._actors.values() if not a.idle]:
            await asyncio.wait([asyncio.ensure_future(a.wait_idle()) for a in busy])


def _fields(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}
