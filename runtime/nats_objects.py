"""ObjectBucket: a JetStream object store (``OBJ_<bucket>``), the one place nats-py's object
store API is used (rule 4: only ``runtime/nats*.py`` import nats).

It holds the payloads too large for one message (runtime/payload_seal.py, the claim check).
Objects are chunked by the server-side convention of the object store, so ``nats object get``
reads them too. nats-py concatenates chunks with ``bytes +=`` (quadratic for 50 MB), so reads
go through ``writeinto`` a ``BytesIO``.
"""

from __future__ import annotations

import contextlib
import io

import nats.js.errors
from nats.js.api import ObjectMeta, ObjectMetaOptions, ObjectStoreConfig, StorageType
from nats.js.object_store import ObjectStore

from .errors import PayloadUnreadable
from .nats_client import Connection, map_errors, nats_core

CHUNK_SIZE = 512 * 1024  # fewer, larger chunks: a put awaits each chunk's ack in turn


async def ensure_object_bucket(conn: Connection, *, bucket: str, replicas: int, ttl: float = 0.0) -> None:
    """Create the object store bucket if it does not exist (an existing one is kept as is:
    changing its TTL is an operator's decision, ``nats stream edit OBJ_<bucket>``)."""
    js = nats_core(conn).jetstream()
    with map_errors(f"provision object store {bucket}"):
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
            with map_errors(f"open object store {self.bucket}"):
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
        with map_errors(f"read object {name} info"):
            try:
                await store.get_info(name)
            except nats.js.errors.ObjectNotFoundError:
                return False
        return True

    async def put(self, name: str, data: bytes) -> None:
        store = await self._opened()
        meta = ObjectMeta(name=name, options=ObjectMetaOptions(max_chunk_size=self._chunk_size))
        with map_errors(f"store object {name}"):
            await store.put(name, data, meta=meta)

    async def get(self, name: str) -> bytes:
        """The object's bytes; ``PayloadUnreadable`` if it is gone (purged, expired)."""
        store = await self._opened()
        out = io.BytesIO()
        with map_errors(f"read object {name}"):
            try:
                await store.get(name, writeinto=out)  # type: ignore[arg-type]
            except nats.js.errors.ObjectNotFoundError:
                raise PayloadUnreadable(
                    f"payload object {name} is not in {self.bucket} (purged or expired)"
                ) from None
            except nats.js.errors.DigestMismatchError:
                raise PayloadUnreadable(f"payload object {name} is corrupt (digest mismatch)") from None
        return out.getvalue()

    async def delete(self, name: str) -> None:
        store = await self._opened()
        with map_errors(f"delete object {name}"), contextlib.suppress(nats.js.errors.ObjectNotFoundError):
            await store.delete(name)
