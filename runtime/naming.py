"""Names of every stream, bucket, consumer and subject, derived from one namespace.

A namespace isolates one Perdure installation (or one test) on a NATS server:
``<ns>.inbox.<execution>``, ``<ns>.history.<execution>``, ``<ns>.work.<activity>``, and
streams/buckets prefixed with the upper-cased namespace.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from .errors import ConfigurationError, InvalidPayload

# Execution ids and activity names are single NATS subject tokens and KV key parts.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_\-=]{1,200}$")
_NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")


def check_execution_id(execution_id: str) -> str:
    if not _TOKEN_RE.match(execution_id):
        raise InvalidPayload(f"execution id {execution_id!r} is not valid: use 1 to 200 of A-Z a-z 0-9 _ - =")
    return execution_id


def check_name(kind: str, name: str) -> str:
    if not _TOKEN_RE.match(name):
        raise ConfigurationError(f"{kind} name {name!r} is not valid: use 1 to 200 of A-Z a-z 0-9 _ - =")
    return name


@functools.lru_cache(maxsize=4096)
def partition_of(execution_id: str, partitions: int) -> int:
    """The inbox partition of an execution: FNV-1a 32 modulo N.

    This is exactly what the server's ``{{partition(N,1)}}`` subject transform computes,
    so the runtime can name a timer's partition without asking the server. Cached: an
    execution's attempts and timers ask again and again (a byte loop in Python each time).
    """
    h = 0x811C9DC5
    for byte in execution_id.encode():
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h % partitions


@dataclass(frozen=True, slots=True)
class Names:
    namespace: str = "perdure"

    def __post_init__(self) -> None:
        if not _NAMESPACE_RE.match(self.namespace):
            raise ConfigurationError(
                f"namespace {self.namespace!r} is not valid: lower-case letter, then a-z 0-9 _"
            )

    @property
    def _upper(self) -> str:
        return self.namespace.upper()

    # streams
    @property
    def history_stream(self) -> str:
        return f"{self._upper}_HISTORY"

    @property
    def inbox_stream(self) -> str:
        return f"{self._upper}_INBOX"

    @property
    def work_stream(self) -> str:
        return f"{self._upper}_WORK"

    @property
    def dead_stream(self) -> str:
        """Dead letters: messages that cannot be processed (actors/dead_letters.py)."""
        return f"{self._upper}_DEAD"

    # KV buckets
    @property
    def timers_bucket(self) -> str:
        return f"{self._upper}_TIMERS"

    @property
    def executions_bucket(self) -> str:
        return f"{self._upper}_EXECUTIONS"

    @property
    def leases_bucket(self) -> str:
        return f"{self._upper}_LEASES"

    @property
    def payloads_bucket(self) -> str:
        """Object store of the payloads too large for one message (runtime/payload_seal.py)."""
        return f"{self._upper}_PAYLOADS"

    # subjects
    def history(self, execution_id: str) -> str:
        return f"{self.namespace}.history.{execution_id}"

    @property
    def history_wildcard(self) -> str:
        return f"{self.namespace}.history.*"

    def inbox(self, execution_id: str) -> str:
        """Where anything that happens to an execution is published (pre-partitioning)."""
        return f"{self.namespace}.inbox.{execution_id}"

    @property
    def inbox_wildcard(self) -> str:
        return f"{self.namespace}.inbox.*"

    def inbox_partition(self, partition: int) -> str:
        """The stored subjects of one partition (after the stream's subject transform)."""
        return f"{self.namespace}.inbox.{partition}.*"

    def stored_inbox(self, partition: int, execution_id: str) -> str:
        """The subject an execution's inbox messages are stored under (in its partition)."""
        return f"{self.namespace}.inbox.{partition}.{execution_id}"

    def work(self, activity: str) -> str:
        return f"{self.namespace}.work.{activity}"

    @property
    def work_wildcard(self) -> str:
        return f"{self.namespace}.work.*"

    @property
    def dead_wildcard(self) -> str:
        return f"{self.namespace}.dead.>"

    def dead_parked(self, partition: int, execution_id: str) -> str:
        """Messages of a BLOCKED execution, kept to be sent again once it can run (by partition,
        so the runtime that takes a partition finds its blocked executions)."""
        return f"{self.namespace}.dead.parked.{partition}.{execution_id}"

    def dead_parked_partition(self, partition: int) -> str:
        return f"{self.namespace}.dead.parked.{partition}.*"

    def dead_poison(self, execution_id: str) -> str:
        """Messages that can never be processed (they do not decode): kept for inspection."""
        return f"{self.namespace}.dead.poison.{execution_id}"

    def api(self, verb: str) -> str:
        """Request/reply subjects served by every runtime (token completion, signals...)."""
        return f"{self.namespace}.api.{verb}"

    # consumers
    def inbox_consumer(self, partition: int) -> str:
        return f"inbox-{partition}"

    def work_consumer(self, activity: str) -> str:
        return f"work-{activity}"

    # KV keys
    def kv_subject(self, bucket: str, key: str) -> str:
        return kv_subject(bucket, key)

    def kv_stream(self, bucket: str) -> str:
        return kv_stream(bucket)


def kv_stream(bucket: str) -> str:
    """The stream holding a KV bucket."""
    return f"KV_{bucket}"


def kv_subject(bucket: str, key: str) -> str:
    """The subject of a key (or a pattern of keys) in a KV bucket."""
    return f"$KV.{bucket}.{key}"
