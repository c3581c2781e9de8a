"""A KV bucket: the one place its stream (``KV_<bucket>``) and subjects (``$KV.<bucket>.<key>``)
are spelled, with the reads and writes the engine uses, and ``update``: the read, change,
compare-and-set loop (bounded) that several writers of one key need.

Entries are read as ``StoredMessage`` (``seq`` is the revision; ``is_value`` is False for a
delete or purge marker), so callers see TTL headers and markers as the server stores them.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .errors import HistoryConflict
from .naming import Names
from .nats_client import Ack, Connection, StoredMessage, Subscription


@dataclass(frozen=True, slots=True)
class Put:
    """What ``update`` writes: the new value and its TTL (None: the bucket's default)."""

    data: bytes
    ttl: float | None = None


@dataclass(frozen=True, slots=True)
class Updated:
    """How ``update`` ended: the entry it last read, and the ack of its write (None: no write)."""

    stored: StoredMessage | None
    ack: Ack | None


class KVBucket:
    def __init__(self, conn: Connection, names: Names, bucket: str) -> None:
        self._conn = conn
        self._names = names
        self.bucket = bucket
        self.stream = names.kv_stream(bucket)
        self._prefix = names.kv_subject(bucket, "")

    def subject(self, key: str) -> str:
        return self._prefix + key  # names.kv_subject(bucket, key), without two calls per write

    def key_of(self, subject: str) -> str:
        """The key of one of this bucket's subjects (as a watch delivers it)."""
        return subject[len(self._prefix) :]

    # ------------------------------------------------------------------ reads

    async def get(self, key: str) -> StoredMessage | None:
        return await self._conn.get_last(self.stream, self.subject(key))

    async def get_many(self, patterns: list[str]) -> list[StoredMessage]:
        """The latest entry of every key matching one of ``patterns`` (``*``/``>`` allowed)."""
        return await self._conn.get_multi_last(self.stream, [self.subject(p) for p in patterns])

    async def scan(self, pattern: str = ">") -> list[StoredMessage]:
        return await self._conn.scan_last(self.stream, self.subject(pattern))

    async def watch(
        self,
        pattern: str,
        callback: Callable[[StoredMessage], Awaitable[None]],
        *,
        last_per_subject: bool = True,
    ) -> Subscription:
        return await self._conn.watch(
            self.stream, self.subject(pattern), callback, last_per_subject=last_per_subject
        )

    # ----------------------------------------------------------------- writes

    async def put(
        self, key: str, data: bytes, *, revision: int | None = None, ttl: float | None = None
    ) -> Ack:
        """Store ``data``; with ``revision``, only if the key is still at it (0: absent), else
        ``HistoryConflict``."""
        return await (await self.put_nowait(key, data, revision=revision, ttl=ttl))  # type: ignore[no-any-return]

    async def put_nowait(
        self, key: str, data: bytes, *, revision: int | None = None, ttl: float | None = None
    ) -> asyncio.Future[Any]:
        """Send the put; the future gives its ``Ack`` (or raises) once stored."""
        return await self._conn.publish_nowait(
            self.subject(key), data, expected_last_subject_seq=revision, ttl=ttl
        )

    async def purge_nowait(self, key: str) -> asyncio.Future[int]:
        """Purge every entry of ``key`` (a pattern purges all its keys)."""
        return await self._conn.purge_nowait(self.stream, self.subject(key))

    async def purge(self, key: str) -> int:
        return await (await self.purge_nowait(key))

    async def update(
        self,
        key: str,
        change: Callable[[StoredMessage | None, int], Put | None],
        *,
        attempts: int | None = 5,
        deadline: float | None = None,
    ) -> Updated:
        """Read ``key``, ask ``change(entry, conflicts so far)`` what to write (None: nothing),
        write it at the revision read; when another writer got there first, read again (with
        a short random back-off). Gives up with ``HistoryConflict`` after ``attempts`` writes
        or ``deadline`` seconds, whichever comes first (None: no such bound)."""
        loop = asyncio.get_running_loop()
        give_up = None if deadline is None else loop.time() + deadline
        for conflicts in itertools.count():
            stored = await self.get(key)
            put = change(stored, conflicts)
            if put is None:
                return Updated(stored, None)
            revision = stored.seq if stored is not None else 0
            try:
                return Updated(stored, await self.put(key, put.data, revision=revision, ttl=put.ttl))
            except HistoryConflict:
                spent = attempts is not None and conflicts + 1 >= attempts
                if spent or (give_up is not None and loop.time() > give_up):
                    raise HistoryConflict(
                        f"{self.subject(key)} changed {conflicts + 1} times while it was being updated"
                    ) from None
            await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**conflicts)))
        raise AssertionError("unreachable")  # pragma: no cover


__all__ = ["KVBucket", "Put", "Updated"]
