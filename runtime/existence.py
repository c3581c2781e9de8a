"""Whether an execution exists, as seen from outside its actor (client verbs, ``<ns>.api.*``).

A signal or a cancel to an id that names no execution would sit in the inbox until an
actor drops it: the sender must hear ``ExecutionNotFound`` instead, whichever way it sent.
"""

from __future__ import annotations

from .errors import ExecutionNotFound, PermissionDenied
from .kv_bucket import KVBucket
from .naming import Names, partition_of
from .nats_client import Connection, StoredMessage


async def require_execution(
    conn: Connection, names: Names, execution_id: str, partitions: int
) -> StoredMessage | None:
    """Raise ``ExecutionNotFound`` unless ``execution_id`` has an index entry, a message
    waiting in its inbox (a start no runtime has absorbed yet), or a history. Returns the
    index entry when there is one.

    The inbox is read before the history on purpose: a runtime appends the step absorbing
    a start before it acks the start (and writes the index with the step's effects), so a
    start that left the inbox between the two reads is found in the history.
    """
    index = await KVBucket(conn, names, names.executions_bucket).get(execution_id)
    if index is not None:
        return index
    stored_inbox = names.stored_inbox(partition_of(execution_id, partitions), execution_id)
    try:
        if await conn.get_last(names.inbox_stream, stored_inbox) is not None:
            return None
        if await conn.get_last(names.history_stream, names.history(execution_id)) is None:
            raise ExecutionNotFound(f"no execution {execution_id!r}")
    except PermissionDenied:
        return None  # a service may read the index, not inboxes or histories: cannot tell, go on
    return None
