"""IndexPages: the executions index, read a page at a time, most recently changed first.

The index is a KV bucket with one entry per execution and a history of 1: its stream keeps
only each key's latest value, so read from its end it lists every execution once, in the
order of their last change (the entry's revision, its stream sequence). A page is read
backwards in windows of sequences, each window one batched direct get (no consumer to
create, no stream to walk): the newest ``2 x (limit + 1)`` sequences first, then windows
four times wider, until ``limit + 1`` entries matched (so the page knows whether another
follows) or the stream's start; a window of ``CONSUMER_WINDOW`` or more (a selective filter)
is the rest of the index in one ordered read instead. The cursor is the revision of the page's last entry; the
next page lists the entries below it. Measured on 10,000 entries (bench/list_executions.py,
2 shared cores): a page of 50 in about 10 ms, the whole index in 200 to 330 ms.

Filters: the keys are execution ids, and a subject filter matches whole tokens only, so no
filter but an exact id could be applied by the server. Status, workflow, id prefix and start
time are tested on each decoded entry (one typed decoder, reused; results stay raw bytes).
``since`` also ends the read early: an execution started after ``since`` changed after it, so
once the window reaches entries stored long enough before ``since`` (``SINCE_SKEW``, for the
clocks of runtimes and server), nothing older can match.

While executions change: one that changes while you page gets a new revision and moves to
the first page. One already listed is not listed again; one not listed yet is listed on the
first page of the next listing, not on a later page of this one.

The whole index (``limit=0``, or a limit that every entry fits in) is one ordered consumer
instead (``scan_last``): measured
faster for everything (260 ms against 380 ms for 10,000 by batched direct gets, whose
per-message headers nats-py parses slowly).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import msgspec

from perdure.runtime import codec
from perdure.runtime.errors import InvalidPayload
from perdure.runtime.messages import ExecutionRecord
from perdure.runtime.naming import Names
from perdure.runtime.nats_client import Connection, StoredMessage

from .handle import ExecutionDescription

WINDOW = 32  # sequences of the first window, at least
MAX_BATCH = 10_000  # entries per batched direct get
# A window this wide is read by one ordered consumer instead (the rest of the index): about
# 25 us an entry against 80 by direct gets, whose headers nats-py parses slowly. A filter
# that matches nothing in 10,000 entries: 1 s by windows, 0.3 s so.
CONSUMER_WINDOW = 1024
SINCE_SKEW = 60.0  # seconds a runtime's clock may be ahead of the server's, for ``since``
_records = msgspec.json.Decoder(list[ExecutionRecord])  # built once (runtime/codec.py's rule)
_STAMP = re.compile(r"^(.*?\.\d{1,6})\d*(Z|[+-]\d\d:\d\d)$")


@dataclass(frozen=True, slots=True)
class IndexFilter:
    status: str | None = None
    workflow: str | None = None
    prefix: str = ""
    since: float | None = None  # started at or after (epoch seconds)

    def match(self, record: ExecutionRecord) -> bool:
        return (
            (self.status is None or record.status == self.status)
            and (self.workflow is None or record.workflow == self.workflow)
            and record.execution_id.startswith(self.prefix)
            and (self.since is None or record.started_at >= self.since)
        )


_NO_FILTER = IndexFilter()


@dataclass(frozen=True, slots=True)
class ExecutionPage:
    """One page of a listing, most recently changed first. ``next``: pass it as ``after``
    for the next page (None: this is the last). ``indexed``: entries in the whole index."""

    executions: list[ExecutionDescription]
    next: str | None
    indexed: int


def parse_cursor(after: str) -> int:
    """A page cursor: the revision below which the next page starts."""
    if not after.isdigit() or int(after) < 1:
        raise InvalidPayload(f"page cursor {after!r} is not valid: give the `next` of a page (a revision)")
    return int(after)


class IndexPages:
    def __init__(self, conn: Connection, names: Names) -> None:
        self._conn = conn
        self._stream = names.kv_stream(names.executions_bucket)
        self._subject = names.kv_subject(names.executions_bucket, ">")

    async def page(self, where: IndexFilter, *, limit: int, after: str | None = None) -> ExecutionPage:
        """Up to ``limit`` entries matching ``where`` (0: all) below the cursor ``after``."""
        below = parse_cursor(after) if after else None
        state = (await self._conn.stream_info(self._stream)).state
        end = state.last_seq + 1 if below is None else min(below, state.last_seq + 1)
        if limit <= 0 or limit >= state.messages:  # every entry fits: one ordered read is cheaper
            everything = await self._everything(where, end)
            return ExecutionPage(everything[: limit or None], None, state.messages)
        first = max(state.first_seq, 1)
        found: list[ExecutionDescription] = []
        # Twice the page: one window when half the sequences are live (an entry rewritten
        # once, RUNNING then closed, leaves one gap); read cost is per entry (about 70 us, most
        # of it nats-py parsing a direct get's headers), so a page reads no more than it needs.
        window = max(WINDOW, 2 * (limit + 1))
        while end > first and len(found) <= limit:
            if window >= CONSUMER_WINDOW:  # a selective filter: the rest in one ordered read
                found.extend(await self._everything(where, end))
                break
            start = max(first, end - window)
            chunk = await self._read_range(start, end)
            found.extend(_matching(reversed(chunk), where))
            end, window = start, window * 4
            if where.since is not None and chunk and _stored_before(chunk[0], where.since - SINCE_SKEW):
                break  # everything older changed, so started, before ``since``
        more = len(found) > limit
        shown = found[:limit]
        return ExecutionPage(shown, str(shown[-1].revision) if more else None, state.messages)

    async def _read_range(self, start: int, end: int) -> list[StoredMessage]:
        """The entries with a revision in ``[start, end)``: one batched direct get (the range
        holds at most ``end - start`` of them), more only past ``MAX_BATCH``."""
        out: list[StoredMessage] = []
        seq = start
        while seq < end:
            chunk, more = await self._conn.read_batch(
                self._stream, self._subject, start_seq=seq, batch=min(end - seq, MAX_BATCH)
            )
            out.extend(m for m in chunk if m.seq < end)
            if not more or not chunk or chunk[-1].seq >= end - 1:
                break
            seq = chunk[-1].seq + 1
        return out

    async def _everything(self, where: IndexFilter, end: int) -> list[ExecutionDescription]:
        stored = await self._conn.scan_last(self._stream, self._subject)
        stored.sort(key=lambda m: m.seq, reverse=True)
        return _matching((m for m in stored if m.seq < end), where)


def _matching(messages: Iterable[StoredMessage], where: IndexFilter) -> list[ExecutionDescription]:
    values = [m for m in messages if m.is_value]  # not a deleted or purged entry
    records = _decode_all(values)
    test = where.match if where != _NO_FILTER else None
    return [
        ExecutionDescription.of(record, revision=message.seq)
        for message, record in zip(values, records, strict=True)
        if test is None or test(record)
    ]


def _decode_all(values: list[StoredMessage]) -> list[ExecutionRecord]:
    """Every entry in one decode of a JSON array (one call into msgspec, not one per entry:
    half the time for 10,000); where one does not decode, the error names it."""
    try:
        return _records.decode(b"[" + b",".join(m.data for m in values) + b"]")
    except msgspec.DecodeError:
        return [codec.decode(codec.execution_record, m.data, what=f"index entry {m.subject}") for m in values]


def _stored_before(message: StoredMessage, when: float) -> bool:
    """Whether the server stored ``message`` before ``when`` (False if it does not say)."""
    match = _STAMP.match(message.time)
    if match is None:
        return False
    try:
        stored = datetime.fromisoformat((match.group(1) + match.group(2)).replace("Z", "+00:00"))
    except ValueError:
        return False
    return stored.timestamp() < when
