"""ObjectBucket: a JetStream object store (``OBJ_<bucket>``), the one place nats-py's object
store API is used (rule 4: only ``runtime/nats*.py`` import nats).

It holds the payloads too large for one message (runtime/payload_seal.py, the claim check).
Objects are chunked by the server-side convention of the object store, so ``nats object get``
reads them too. nats-py concatenates chunks with ``bytes +=`` (quadratic for 50 MB), so reads
go through ``writeinto`` a ``BytesIO``.
"""

from __future__ import annotations

import contextlib

import nats.js.errors
from nats.js.api import ObjectMeta, ObjectMetaOptions, ObjectStoreConfig, StorageType
from nats.js.object_store import ObjectStore

from .errors import PayloadUnreadable
from .nats_client import Connection, map_errors, nats_core

CHUNK_SIZE = 512 * 1024  # fewer, larger chunks: a put awaits each chunk's ack in turn


def _subjects(bucket: str) -> tuple[str, ...]:
    """What an object store operation publishes to (for the permission guard: a user without
    the object store's permissions gets ``PermissionDenied`` at once, not a timeout)."""
    stream = f"OBJ_{bucket}"
    return (
        f"$O.{bucket}.",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.STREAM.PURGE.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
    )


def _guarded(conn: Connection, bucket: str, what: str) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(map_errors(what))
    # The connection's permission watch (runtime/nats_access.py), shared by the boundary modules.
    stack.enter_context(conn._denied.guard(*_subjects(bucket)))
    return stack


async def ensure_object_bucket(conn: Connection, *, bucket: str, replicas: int, ttl: float = 0.0) -> None:
    """Create the object store bucket if it does not exist (an existing one is kept as is:
    changing its TTL is an operator's decision, ``nats stream edit OBJ_<bucket>``)."""
    js = nats_core(conn).jetstream()
    with _guarded(conn, bucket, f"provision object store {bucket}"):
        try:
            await js.object_store(bucket)
            return
        except nats.js.errors.BucketNotFoundError:
            pass
        config = ObjectStoreConfig(ttl=ttl if ttl > 0 else None, storage=StorageType.FILE, replicas=replicas)
        await js.create_object_store(bucket, config=config)


class ObjectBucket:
    """Put, get, test and delete whole objects by name (opened lazily on first use)."""

    def __init__(self, conn: Connection, bucket: str, *, chunk_size: int = CHUNK_SIZE) -> None:
        self._conn = conn
        self.bucket = bucket
        self._chunk_size = chunk_size
        self._store: ObjectStore | None = None

    async def _opened(self) -> ObjectStore:
        if self._store is None:
            with _guarded(self._conn, self.bucket, f"open object store {self.bucket}"):
                try:
                    self._store = await nats_core(self._conn).jetstream().object_store(self.bucket)
                except nats.js.errors.BucketNotFoundError:
                    raise PayloadUnreadable(
                        f"object store {self.bucket} does not exist: is the namespace provisioned "
                        "(a runtime started once)?"
                    ) from None
        return self._store

    async def exists(self, name: str) -> bool:
        store = await self._opened()
        with _guarded(self._conn, self.bucket, f"read object {name} info"):
            try:
                await store.get_info(name)
            except nats.js.errors.ObjectNotFoundError:
                return False
        return True

    async def put(self, name: str, data: bytes) -> None:
        store = await self._opened()
        meta = ObjectMeta(name=name, options=ObjectMetaOptions(max_chunk_size=self._chunk_size))
        with _guarded(self._conn, self.bucket, f"store object {name}"):
            await store.put(name, data, meta=meta)

    async def get(self, name: str) -> bytes:
        """The object's bytes; ``PayloadUnreadable`` if it is gone (purged, expired).

        Chunks are read with the connection's batched direct gets rather than nats-py's
        ``get``: that one subscribes without naming the stream, so it asks the server for
        ``$JS.API.STREAM.NAMES`` (a permission a least-privilege user does not have), and it
        concatenates chunks with ``bytes +=`` (quadratic for 50 MB)."""
        store = await self._opened()
        with _guarded(self._conn, self.bucket, f"read object {name} info"):
            try:
                info = await store.get_info(name)
            except nats.js.errors.ObjectNotFoundError:
                raise PayloadUnreadable(
                    f"payload object {name} is not in {self.bucket} (purged or expired)"
                ) from None
        chunks = await self._conn.read_subject(f"OBJ_{self.bucket}", f"$O.{self.bucket}.C.{info.nuid}")
        data = b"".join(chunk.data for chunk in chunks)
        if len(data) != info.size:
            raise PayloadUnreadable(f"payload object {name} is {len(data)} bytes of {info.size} (incomplete)")
        return data

    async def delete(self, name: str) -> None:
        store = await self._opened()
        with (
            _guarded(self._conn, self.bucket, f"delete object {name}"),
            contextlib.suppress(nats.js.errors.ObjectNotFoundError),
        ):
            await store.delete(name)
