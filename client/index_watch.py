"""IndexWatch: one watch of the executions index shared by all of a client's waiters.

``handle.result()`` and ``handle.watch()`` need every change of one execution's index
entry, with no gap between reading it and hearing of the next change. One ordered
consumer per waiter gives that but does not scale (a thousand concurrent ``result()`` calls
hit the server's consumer limit); a core subscription plus a read has a gap (the server
fans a publish out before the stream stores it). One ordered consumer over the whole index,
delivering only what is stored after it starts, has neither problem: a waiter registers,
then reads the entry; anything stored later reaches it through the consumer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

from perdure.runtime.kv_bucket import KVBucket
from perdure.runtime.naming import Names
from perdure.runtime.nats_client import Connection, StoredMessage, Subscription


class IndexWatch:
    def __init__(self, conn: Connection, names: Names) -> None:
        self._index = KVBucket(conn, names, names.executions_bucket)
        self._waiters: dict[str, set[asyncio.Queue[StoredMessage]]] = collections.defaultdict(set)
        self._sub: Subscription | None = None
        self._starting = asyncio.Lock()

    async def _ensure_started(self) -> None:
        if self._sub is not None:
            return  # every result() asks: no lock once the watch runs
        async with self._starting:
            if self._sub is None:
                self._sub = await self._index.watch(">", self._on_entry, last_per_subject=False)

    async def _on_entry(self, message: StoredMessage) -> None:
        execution_id = self._index.key_of(message.subject)
        for queue in self._waiters.get(execution_id, ()):
            queue.put_nowait(message)

    @contextlib.asynccontextmanager
    async def changes(self, execution_id: str) -> AsyncIterator[asyncio.Queue[StoredMessage]]:
        """A queue of the index entries stored for ``execution_id`` from now on."""
        await self._ensure_started()
        queue: asyncio.Queue[StoredMessage] = asyncio.Queue()
        self._waiters[execution_id].add(queue)
        try:
            yield queue
        finally:
            waiters = self._waiters.get(execution_id)
            if waiters is not None:
                waiters.discard(queue)
                if not waiters:
                    del self._waiters[execution_id]

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.stop()
            self._sub = None
