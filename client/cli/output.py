"""What the verbs print: aligned tables with human times for people, JSON for scripts.

The JSON field names are part of the interface (README, "Command line"): an execution is
``execution_id, workflow, status, run, started_at, closed_at, history_length, error``, times
as ISO 8601 UTC strings (``null`` while open), ``error`` as ``{code, type, message}`` or null;
a row of ``list`` adds ``revision`` (its index revision: the last row's is the next page's
cursor).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from perdure.client import ExecutionDescription
from perdure.runtime.events import HistoryStep

_json = msgspec.json.Encoder()


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (milliseconds), for JSON."""
    if ts is None or ts <= 0:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def human(ts: float | None, now: float | None = None) -> str:
    """Epoch seconds as ``2026-11-30 08:12:03 UTC (4m ago)``."""
    if ts is None or ts <= 0:
        return "-"
    stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp} UTC ({ago((now or time.time()) - ts)})"


def ago(seconds: float) -> str:
    return "just now" if seconds < 1 else f"{duration(seconds)} ago"


def duration(seconds: float) -> str:
    """``850ms``, ``4.2s``, ``12m``, ``3h``, ``2d``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    rows = [list(map(str, row)) for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = [[*headers], *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines)


def execution_json(d: ExecutionDescription) -> dict[str, Any]:
    error = None
    if d.error is not None:
        error = {"code": d.error.code, "type": d.error.type, "message": d.error.message}
    return {
        "execution_id": d.execution_id,
        "workflow": d.workflow,
        "status": d.status,
        "run": d.run,
        "started_at": iso(d.started_at),
        "closed_at": iso(d.closed_at),
        "history_length": d.history_length,
        "error": error,
    }


def listed_json(d: ExecutionDescription) -> dict[str, Any]:
    """A row of ``perdure list --json``: an execution and its index ``revision`` (the last
    row's revision is the cursor of the next page, ``--after``)."""
    return {**execution_json(d), "revision": d.revision}


def executions_table(items: Sequence[ExecutionDescription]) -> str:
    now = time.time()
    rows = [
        (
            d.execution_id,
            d.workflow,
            d.status,
            str(d.run),
            human(d.started_at, now),
            duration((d.closed_at or now) - d.started_at) if d.started_at else "-",
            str(d.history_length),
        )
        for d in items
    ]
    return table(("ID", "WORKFLOW", "STATUS", "RUN", "STARTED", "DURATION", "EVENTS"), rows)


def description_text(d: ExecutionDescription) -> str:
    rows = [
        ("Execution", d.execution_id),
        ("Workflow", d.workflow),
        ("Status", d.status),
        ("Run", str(d.run)),
        ("Started", human(d.started_at)),
        ("Closed", human(d.closed_at)),
        ("Events", str(d.history_length)),
    ]
    if d.error is not None:
        rows.append(
            ("Error", f"{d.error.code}: {d.error.type + ': ' if d.error.type else ''}{d.error.message}")
        )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in rows)


def event_json(event: Any) -> dict[str, Any]:
    """An event as stored (its ``kind`` and fields; payloads are JSON already)."""
    decoded: dict[str, Any] = msgspec.json.decode(_json.encode(event))
    return decoded


def step_json(number: int, step: HistoryStep) -> dict[str, Any]:
    return {
        "step": number,
        "time": iso(step.time),
        "runtime": step.runtime,
        "inputs": [event_json(e) for e in step.inputs],
        "decisions": [event_json(e) for e in step.decisions],
    }


def step_text(number: int, step: HistoryStep) -> str:
    """``#3  08:12:03.120  rt-1`` then one line per event: ``  in   signal.received  {...}``."""
    stamp = datetime.fromtimestamp(step.time, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    lines = [f"#{number:<4} {stamp}  {step.runtime}".rstrip()]
    events = [("in", e) for e in step.inputs] + [("out", e) for e in step.decisions]
    width = max([len(event_json(e)["kind"]) for _, e in events] or [0])
    for direction, event in events:
        fields = event_json(event)
        kind = fields.pop("kind")
        payload = _json.encode(fields).decode() if fields else ""
        lines.append(f"  {direction:<4} {kind:<{width}}  {payload}".rstrip())
    return "\n".join(lines)


def print_json(value: Any) -> None:
    sys.stdout.write(_json.encode(value).decode() + "\n")
    sys.stdout.flush()


def print_text(text: str) -> None:
    print(text, flush=True)


def print_error(message: str) -> None:
    """One line on stderr, however long or multi-line the message."""
    print("perdure: " + " ".join(message.split()), file=sys.stderr, flush=True)
