"""PartitionHost: consumes one inbox partition this runtime holds the lease of, and routes each
message to its execution's actor (``Worker.actor``); also answers the partition's queries.

Each delivery carries its consumer's ``release``: credit goes back to the consumer that
delivered the message even after the host recreated it (a server restart, a consumer lost).

The host owns a scope (``Supervisor``, a child of the runtime's) and the actors of its
partition: the consume loop and its actors' tasks (``execution:<id>`` drains, ``settle``
acks) live in that scope, so stopping the partition stops exactly them, no cache scan.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from perdure.runtime import verbs
from perdure.runtime.errors import PerdureError
from perdure.runtime.messages import QueryReply, QueryRequest
from perdure.runtime.naming import check_execution_id
from perdure.runtime.nats_admin import recreate_consumer
from perdure.runtime.nats_consumer import PullConsumer
from perdure.runtime.supervisor import Ready, Supervisor

from .verb_server import serve

if TYPE_CHECKING:
    from .execution_actor import ExecutionActor
    from .worker import Worker

log = structlog.get_logger("perdure.worker")

INBOX_ACK_WAIT = 30.0
# Inbox messages one runtime handles at once, over all the partitions there are (each
# partition's consumer gets its share as credit). Enough to keep the CPU busy (a step is a
# few round trips), few enough that each step finishes well within the publish-ack timeout
# and the inbox ack wait however large the backlog: with 2,000 per partition (24,000 in all)
# a burst of 100,000 starts left every step waiting its turn for more than the 10 s ack
# timeout, so they failed, were retried, conflicted with their own late appends and never
# caught up (bench/population.py).
INBOX_IN_FLIGHT = 1024
INBOX_MIN_CREDIT = 32
CANCEL_BOUND = 1.0  # seconds a stopping partition waits for its cancelled tasks to end


def inbox_credit(partitions: int) -> int:
    """One partition's consumer credit."""
    return max(INBOX_MIN_CREDIT, INBOX_IN_FLIGHT // max(1, partitions))


class PartitionHost:
    """Consumes one inbox partition and routes each message to its execution's actor."""

    def __init__(self, worker: Worker, partition: int, scope: Supervisor) -> None:
        self._worker = worker
        self.partition = partition
        self.scope = scope
        self.actors: dict[str, ExecutionActor] = {}  # this partition's cached actors (worker.actor)
        self._task: asyncio.Task[None] | None = None
        self._consumer: PullConsumer | None = None
        self._fenced = False  # its consumer is gone and the lease is someone else's: hands off

    async def start(self) -> None:
        """Returns once the partition's consumer pulls, or its first attempt failed (logged;
        the loop retries, the lease stays ours: a restart of NATS must not lose the lease)."""
        self._task = await self.scope.start(self._run, name="consume")

    @property
    def consuming(self) -> bool:
        return self._consumer is not None and not self._fenced

    async def _run(self, ready: Ready) -> None:
        """Consume until stopped; on a failure (server restart, consumer lost) start over.

        A deleted consumer usually means another runtime took the partition over (it
        recreates the consumer): recreating it in turn would take the messages back from
        the new owner, so first check the lease; if it is no longer ours, wait for the
        ownership tick (woken now) to stop this host.
        """
        backoff, failed = 0.1, False
        while True:
            if failed and not await self._worker.still_owns(self.partition):
                await self._fence()
                await asyncio.sleep(backoff)  # the tick stops this host meanwhile
                continue
            try:
                await self._consume(ready)
            except PerdureError as exc:
                log.warning("partition.restart", partition=self.partition, error=str(exc))
            ready()
            failed = True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _fence(self) -> None:
        """Another runtime holds the partition now: until the ownership tick stops this host
        (it may be seconds late, busy releasing others), take no more eager results and fire
        none of its timers (the new holder's watcher has them from the timers bucket)."""
        if self._fenced:
            return
        self._fenced = True
        log.warning("partition.fenced", partition=self.partition, runtime=self._worker.settings.name)
        await self._worker.services.timers.unwatch_partition(self.partition)

    async def _consume(self, ready: Ready) -> None:
        services = self._worker.services
        names, p = services.names, self.partition
        credit = inbox_credit(services.settings.partitions)
        await recreate_consumer(
            services.conn,
            stream=names.inbox_stream,
            name=names.inbox_consumer(p),
            filter_subject=names.inbox_partition(p),
            ack_wait=INBOX_ACK_WAIT,
            max_ack_pending=credit * 4,
        )
        consumer = PullConsumer(services.conn, names.inbox_stream, names.inbox_consumer(p), credit=credit)
        self._consumer = consumer
        self._fenced = False  # the lease is ours again (checked before recreating the consumer)
        await consumer.start()
        ready()
        await services.timers.watch_partition(p)
        queries = await serve(services.conn, names, verbs.QUERY, self._answer_query, partition=p)
        try:
            while True:
                for delivery in await consumer.next_batch():
                    execution_id = delivery.subject.rsplit(".", 1)[1]
                    self._worker.actor(execution_id, p).deliver(delivery)
        finally:
            await queries.stop()
            await consumer.stop()

    async def _answer_query(self, request: QueryRequest, reply: str) -> QueryReply:
        """Queries go to the partition's owner, where the execution's live state is."""
        check_execution_id(request.execution_id)
        return await self._worker.actor(request.execution_id, self.partition).query(
            request.name, request.args
        )

    async def stop(self, timeout: float) -> None:
        """Stop taking messages, let the steps under way finish (at most ``timeout``), cancel
        what is left, forget this partition's actors (STYLE rule 14)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=timeout)
        # Left in the scope: the actors' drains and settles, which end once idle.
        if not await self.scope.wait_idle(timeout):
            log.warning("partition.steps_cut_short", partition=self.partition, tasks=self.scope.running)
        await self.scope.stop(timeout=CANCEL_BOUND)
        self._worker.forget_partition(self)
        await self._worker.services.timers.unwatch_partition(self.partition)
