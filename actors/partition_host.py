"""PartitionHost: consumes one inbox partition this runtime holds the lease of, and routes each
message to its execution's actor (``Worker.actor``); also answers the partition's queries.

Each delivery carries its consumer's ``release``: credit goes back to the consumer that
delivered the message even after the host recreated it (a server restart, a consumer lost).
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

from .verb_server import serve

if TYPE_CHECKING:
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


def inbox_credit(partitions: int) -> int:
    """One partition's consumer credit."""
    return max(INBOX_MIN_CREDIT, INBOX_IN_FLIGHT // max(1, partitions))


class PartitionHost:
    """Consumes one inbox partition and routes each message to its execution's actor."""

    def __init__(self, worker: Worker, partition: int) -> None:
        self._worker = worker
        self.partition = partition
        self._task: asyncio.Task[None] | None = None
        self._consumer: PullConsumer | None = None

    def start(self) -> None:
        self._task = self._worker.services.supervisor.spawn(self._run(), name=f"partition:{self.partition}")

    @property
    def consuming(self) -> bool:
        return self._consumer is not None

    async def _run(self) -> None:
        """Consume until stopped; on a failure (server restart, consumer lost) start over.

        A deleted consumer usually means another runtime took the partition over (it
        recreates the consumer): recreating it in turn would take the messages back from
        the new owner, so first check the lease; if it is no longer ours, wait for the
        ownership tick (woken now) to stop this host.
        """
        backoff, failed = 0.1, False
        while True:
            if failed and not await self._worker.still_owns(self.partition):
                await asyncio.sleep(backoff)  # the tick stops this host meanwhile
                continue
            try:
                await self._consume()
            except PerdureError as exc:
                log.warning("partition.restart", partition=self.partition, error=str(exc))
            failed = True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _consume(self) -> None:
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
        await consumer.start()
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
        """Stop taking messages, let the steps under way finish, forget this partition's actors."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=timeout)
        await self._worker.settle_partition(self.partition, timeout)
        await self._worker.services.timers.unwatch_partition(self.partition)
