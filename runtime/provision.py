"""The Provisioner creates (idempotently) every stream and bucket a namespace needs.

<NS>_HISTORY     limits, <ns>.history.*            one subject per execution
<NS>_INBOX       work queue, <ns>.inbox.* -> <ns>.inbox.<partition>.<execution>
<NS>_WORK        work queue, <ns>.work.*           one subject per activity name
<NS>_DEAD        limits, <ns>.dead.>               dead letters: parked and undecodable messages
KV <NS>_TIMERS   per-key TTL + expiry markers      durable timers, activity attempts
KV <NS>_EXECUTIONS                                  status index, results
KV <NS>_LEASES   per-key TTL                        partition ownership, runtime members
OBJ <NS>_PAYLOADS object store                      payloads too large for one message
"""

from __future__ import annotations

from .nats_admin import ensure_kv_stream, ensure_stream
from .nats_client import Connection
from .nats_objects import ensure_object_bucket
from .settings import Settings


class Provisioner:
    def __init__(self, conn: Connection, settings: Settings) -> None:
        self._conn = conn
        self._settings = settings

    async def provision(self) -> None:
        s, n = self._settings, self._settings.names
        await ensure_stream(
            self._conn, name=n.history_stream, subjects=[n.history_wildcard], replicas=s.replicas
        )
        await ensure_stream(
            self._conn,
            name=n.inbox_stream,
            subjects=[n.inbox_wildcard],
            replicas=s.replicas,
            work_queue=True,
            partition=(
                s.partitions,
                n.inbox_wildcard,
                f"{s.namespace}.inbox.{{{{partition({s.partitions},1)}}}}.{{{{wildcard(1)}}}}",
            ),
            duplicate_window=600.0,
        )
        await ensure_stream(
            self._conn,
            name=n.work_stream,
            subjects=[n.work_wildcard],
            replicas=s.replicas,
            work_queue=True,
            duplicate_window=600.0,
        )
        # Dead letters stay until resumed or purged by an operator: no age limit. The window
        # de-duplicates a message parked twice (a crash between its park and its inbox ack).
        await ensure_stream(
            self._conn,
            name=n.dead_stream,
            subjects=[n.dead_wildcard],
            replicas=s.replicas,
            duplicate_window=600.0,
        )
        await ensure_kv_stream(
            self._conn, bucket=n.timers_bucket, replicas=s.replicas, marker_ttl=s.marker_ttl
        )
        await ensure_kv_stream(self._conn, bucket=n.executions_bucket, replicas=s.replicas)
        await ensure_kv_stream(self._conn, bucket=n.leases_bucket, replicas=s.replicas)
        await ensure_object_bucket(
            self._conn, bucket=n.payloads_bucket, replicas=s.replicas, ttl=s.payload_retention
        )
