"""What the console reads from the namespace's KV buckets: open activity attempts and runtimes.

The console is a client: it reads the same keys the runtimes write (their layout is in
``actors/timers.py``, ``actors/effects.py`` and ``actors/ownership.py``) and decodes the
values with the wire types of ``perdure.runtime.messages``, but never imports the engine.

Timer keys are ``<partition>.<execution>.<run>.<timer>``; an activity attempt's timers are
``a.<seq>.<attempt>.hb`` (its ``ActivityRecord``: nonce, heartbeat timeout, flags; re-put by
every heartbeat), ``.to`` (start to close), ``.s2s`` (schedule to start), ``.live`` (the
liveness key of the runtime running it), and the activity's ``a.<seq>.s2c`` (schedule to
close) and ``a.<seq>.cp`` (the last checkpoint, raw JSON). Closing an activity purges its
keys, so an ``.hb`` record present means an open attempt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from perdure.runtime import codec
from perdure.runtime.kv_bucket import KVBucket
from perdure.runtime.messages import ActivityRecord, Lease
from perdure.runtime.naming import Names
from perdure.runtime.nats_client import Connection, StoredMessage
from perdure.runtime.payload_seal import sealer_for
from perdure.runtime.tokens import TokenData, encode_token

_TIMESTAMP_RE = re.compile(r"^(.*?\.\d{1,6})\d*(Z|[+-]\d\d:\d\d)$")

DEADLINE_LABELS = {
    "to": "start to close",
    "s2s": "schedule to start",
    "s2c": "schedule to close",
    "hb": "heartbeat",
}


def stored_time(stored: StoredMessage) -> datetime | None:
    """When the server stored a message (RFC 3339 with nanoseconds, cut to microseconds)."""
    text = stored.time or stored.headers.get("Nats-Time-Stamp", "")
    if not text:
        return None
    match = _TIMESTAMP_RE.match(text)
    if match:
        text = match.group(1) + match.group(2)
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(slots=True)
class OpenAttempt:
    """One open activity attempt, as the timers bucket shows it."""

    execution_id: str
    run: int
    seq: int
    attempt: int
    partition: int
    record: ActivityRecord
    recorded_at: datetime | None  # the record's last put: scheduling, or the last heartbeat
    live: bool = False  # a runtime renews its liveness key: it is running the attempt
    checkpoint: msgspec.Raw | None = None
    deadlines: dict[str, datetime] = field(default_factory=dict)
    name: str = ""  # filled in from history
    waiting_for_token: bool = False  # filled in by ``classify``

    @property
    def token(self) -> str:
        return encode_token(TokenData(self.execution_id, self.run, self.seq, self.attempt, self.record.nonce))

    @property
    def last_heartbeat(self) -> datetime | None:
        return self.recorded_at if self.record.started else None

    @property
    def state(self) -> str:
        if self.record.cancel_requested:
            return "cancel requested"
        if not self.record.started and not self.live:
            return "scheduled"  # queued, or running in the runtime that scheduled it (eager)
        if self.waiting_for_token:
            return "waiting for token"
        return "running"


def _split_timer_key(subject: str, prefix: str) -> tuple[int, str, int, list[str]] | None:
    parts = subject[len(prefix) :].split(".")
    if len(parts) < 5 or not parts[0].isdigit() or not parts[2].isdigit() or parts[3] != "a":
        return None
    return int(parts[0]), parts[1], int(parts[2]), parts[4:]


async def open_attempts(
    conn: Connection, names: Names, *, execution: tuple[str, int] | None = None
) -> list[OpenAttempt]:
    """Every open activity attempt in the namespace (or of one ``(execution, partition)``),
    with its deadlines and checkpoint."""
    timers = KVBucket(conn, names, names.timers_bucket)
    prefix = timers.subject("")
    # Only activity keys (``<p>.<exec>.<run>.a.>``): workflow timers are not read. One
    # multi-last read answers the first 10,000 keys: about 2,500 open attempts.
    where = f"{execution[1]}.{execution[0]}" if execution else "*.*"
    stored = await timers.get_many([f"{where}.*.a.>"])
    attempts: dict[tuple[str, int, int, int], OpenAttempt] = {}
    per_activity: dict[tuple[str, int, int], dict[str, StoredMessage]] = {}
    per_attempt: dict[tuple[str, int, int, int], dict[str, StoredMessage]] = {}
    for message in stored:
        if not message.is_value:
            continue
        split = _split_timer_key(message.subject, prefix)
        if split is None:
            continue
        partition, execution_id, run, rest = split
        if len(rest) == 2 and rest[0].isdigit():  # a.<seq>.<cp|s2c>
            per_activity.setdefault((execution_id, run, int(rest[0])), {})[rest[1]] = message
        elif len(rest) == 3 and rest[0].isdigit() and rest[1].isdigit():  # a.<seq>.<attempt>.<kind>
            key = (execution_id, run, int(rest[0]), int(rest[1]))
            per_attempt.setdefault(key, {})[rest[2]] = message
            if rest[2] == "hb":
                record = codec.decode(codec.activity_record, message.data, what="activity record")
                attempts[key] = OpenAttempt(
                    execution_id, run, key[2], key[3], partition, record, stored_time(message)
                )
    sealer = sealer_for(conn, names)  # checkpoints may be encrypted or offloaded
    for key, attempt in attempts.items():
        _fill(attempt, per_attempt.get(key, {}), per_activity.get(key[:3], {}))
        if attempt.checkpoint is not None:
            attempt.checkpoint = await sealer.preview_raw(attempt.checkpoint)
    return sorted(attempts.values(), key=lambda a: (a.execution_id, a.seq, a.attempt))


def _fill(attempt: OpenAttempt, own: dict[str, StoredMessage], activity: dict[str, StoredMessage]) -> None:
    attempt.live = "live" in own
    if "cp" in activity:
        attempt.checkpoint = msgspec.Raw(activity["cp"].data)
    for kind, message in [*own.items(), *activity.items()]:
        if kind in ("to", "s2s", "s2c"):
            entry = codec.decode(codec.timer_entry, message.data, what="timer entry")
            if not entry.cancelled:
                attempt.deadlines[DEADLINE_LABELS[kind]] = datetime.fromtimestamp(entry.fire_at, UTC)
    if attempt.record.heartbeat is not None and attempt.last_heartbeat is not None:
        due = attempt.last_heartbeat.timestamp() + attempt.record.heartbeat
        attempt.deadlines[DEADLINE_LABELS["hb"]] = datetime.fromtimestamp(due, UTC)


def classify(attempt: OpenAttempt, *, heartbeats: bool) -> None:
    """Whether the attempt waits for its token (``make_async()``).

    Nothing records that hand-over as such: a started attempt (its record flagged) that no
    runtime keeps alive (no liveness key) and that does not heartbeat is one whose runtime
    has finished its part. An attempt whose timeout is shorter than the runtimes' lease has
    no liveness key either, and shows as waiting for at most that timeout."""
    attempt.waiting_for_token = attempt.record.started and not attempt.live and not heartbeats


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    renewed_at: datetime | None
    expires_at: datetime | None
    partitions: list[int]


@dataclass(frozen=True, slots=True)
class Ownership:
    members: list[Member]
    unowned: list[int]  # partitions no live member holds a lease on
    partitions: int


async def ownership(conn: Connection, names: Names, partitions: int) -> Ownership:
    """Live runtimes (``member.<name>`` keys) and the partitions whose lease each holds."""
    leases = KVBucket(conn, names, names.leases_bucket)
    stored = await leases.get_many(["member.*", "partition.*"])
    members: dict[str, tuple[datetime | None, datetime | None]] = {}
    held: dict[int, str] = {}
    for message in stored:
        if not message.is_value:
            continue
        lease: Lease = codec.decode(codec.lease, message.data, what="lease")
        key = leases.key_of(message.subject)
        if key.startswith("member.") and lease.owner:
            at = stored_time(message)
            members[lease.owner] = (at, _expiry(at, message))
        elif key.startswith("partition.") and lease.owner:
            held[int(key.split(".", 1)[1])] = lease.owner
    out = [
        Member(name, at, expires, sorted(p for p, owner in held.items() if owner == name))
        for name, (at, expires) in sorted(members.items())
    ]
    unowned = sorted(p for p in range(partitions) if held.get(p) not in members)
    return Ownership(out, unowned, partitions)


def _expiry(at: datetime | None, message: StoredMessage) -> datetime | None:
    ttl = message.headers.get("Nats-TTL", "")
    seconds = _ttl_seconds(ttl)
    if at is None or seconds is None:
        return None
    return datetime.fromtimestamp(at.timestamp() + seconds, UTC)


def _ttl_seconds(ttl: str) -> float | None:
    """A ``Nats-TTL`` header: seconds, or a Go duration (``3s``, ``1m30s``, ``500ms``)."""
    if not ttl or ttl == "never":
        return None
    if ttl.isdigit():
        return float(ttl)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)(ms|h|m|s)", ttl):
        total += float(number) * units[unit]
    return total or None


def pretty_json(raw: msgspec.Raw | bytes | None) -> str:
    """Indented JSON for a payload (as stored: any JSON), or the raw text if it is not JSON."""
    if raw is None:
        return ""
    data = bytes(raw)
    try:
        value: Any = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return data.decode(errors="replace")
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()
