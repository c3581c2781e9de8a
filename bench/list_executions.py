"""Listing 10,000 executions: the client's read, ``perdure list`` and the console's page.

Starts its own nats-server (temp store, free loopback port), provisions a namespace and
fills its executions index with N entries. The entries are written the way a runtime writes
them (``actors/effect_runner.py``, ``_update_index``): an ``ExecutionRecord`` encoded with
``runtime.codec`` and put on the index bucket by ``KVBucket.put_nowait``, one put per
execution, with a mix of statuses, workflows, results and errors. Running 10,000 real
workflows to fill it would take minutes on two cores and measure the runtime, not the list.

Prints (median of ``--reps`` runs each, and the fastest as ``*_min_ms``, milliseconds: on a
shared machine the minimum is the steadier figure):
- ``client_all``: ``Client.list_executions()`` reading every entry, in a warm client;
- ``client_page``: one default page (50), in a warm client (when the client pages);
- ``cli_all``: a whole ``perdure list --limit N --json`` process, wall time;
- ``cli_page``: a whole ``perdure list`` process (the default page), wall time;
- ``console_page``: ``GET /executions`` answered by the Starlette app (httpx, in process);
- ``console_no_match``: ``GET /executions?status=BLOCKED``, which no entry matches (the
  worst case: every entry is read).

Usage: python bench/list_executions.py [--n 10000] [--reps 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from perdure.client import Client
from perdure.runtime import codec
from perdure.runtime.embedded import EmbeddedServer
from perdure.runtime.errors import ErrorInfo
from perdure.runtime.kv_bucket import KVBucket
from perdure.runtime.messages import ExecutionRecord
from perdure.runtime.provision import Provisioner
from perdure.runtime.settings import Settings

STATUSES = ("COMPLETED", "COMPLETED", "COMPLETED", "RUNNING", "FAILED", "CANCELLED")
WORKFLOWS = ("order", "payment", "shipment", "refund")


def record(i: int, now: float) -> ExecutionRecord:
    status = STATUSES[i % len(STATUSES)]
    started = now - 86_400 + i
    error = None
    if status == "FAILED":
        error = ErrorInfo(code="activity.error", message=f"card {i} declined", type="Declined")
    return ExecutionRecord(
        execution_id=f"exec-{i:06d}",
        workflow=WORKFLOWS[i % len(WORKFLOWS)],
        status=status,  # type: ignore[arg-type]
        run=1,
        started_at=started,
        closed_at=None if status == "RUNNING" else started + 0.25,
        result=msgspec.Raw(codec.encode({"order": i, "total": i * 3, "ok": True}))
        if status == "COMPLETED"
        else msgspec.Raw(b"null"),
        error=error,
        history_length=7,
    )


async def fill(client: Client, n: int) -> None:
    index = KVBucket(client.conn, client.names, client.names.executions_bucket)
    now = time.time()
    for first in range(0, n, 1000):
        sent = [
            await index.put_nowait(r.execution_id, codec.encode(r))
            for r in (record(i, now) for i in range(first, min(n, first + 1000)))
        ]
        await asyncio.gather(*sent)


async def timed(call: Callable[[], Awaitable[Any]], reps: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = await call()
        times.append((time.perf_counter() - t0) * 1000)
    return times, out


def note(figures: dict[str, Any], name: str, times: list[float]) -> None:
    figures[f"{name}_ms"] = round(statistics.median(times), 1)
    figures[f"{name}_min_ms"] = round(min(times), 1)


def cli(url: str, namespace: str, *args: str) -> tuple[float, str]:
    env = {**os.environ, "PERDURE_URL": url, "PERDURE_NAMESPACE": namespace}
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "perdure.runtime.daemon", "list", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return (time.perf_counter() - t0) * 1000, done.stdout


async def console_page(client: Client, reps: int) -> tuple[list[float], list[float], int]:
    import httpx

    from perdure.client.console.pages import create_app

    app = create_app(client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as http:

        async def get(params: dict[str, str]) -> httpx.Response:
            response = await http.get("/executions", params=params)
            response.raise_for_status()
            return response

        times, response = await timed(lambda: get({}), reps)
        # A filter nothing matches: the worst case, every entry read (one ordered read).
        filtered, _ = await timed(lambda: get({"status": "BLOCKED"}), reps)
    return times, filtered, len(response.text)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()
    server = EmbeddedServer()
    server.start()
    try:
        namespace = "bench" + uuid.uuid4().hex[:8]
        settings = Settings(url=server.url, namespace=namespace)
        client = await Client.connect(server.url, namespace=namespace)
        await Provisioner(client.conn, settings).provision()
        t0 = time.perf_counter()
        await fill(client, args.n)
        figures: dict[str, Any] = {"n": args.n, "fill_ms": round((time.perf_counter() - t0) * 1000)}

        times, listed = await timed(lambda: client.list_executions(), args.reps)
        assert len(listed) == args.n, (len(listed), args.n)
        note(figures, "client_all", times)
        if hasattr(client, "list_page"):
            times, page = await timed(lambda: client.list_page(limit=50), args.reps)
            assert len(page.executions) == 50
            note(figures, "client_page", times)

        runs = [cli(server.url, namespace, "--limit", str(args.n), "--json") for _ in range(args.reps)]
        assert len(json.loads(runs[-1][1])) == args.n
        note(figures, "cli_all", [ms for ms, _ in runs])
        runs = [cli(server.url, namespace) for _ in range(args.reps)]
        note(figures, "cli_page", [ms for ms, _ in runs])

        times, filtered, size = await console_page(client, args.reps)
        note(figures, "console_page", times)
        note(figures, "console_no_match", filtered)
        figures["console_page_bytes"] = size
        await client.close()
    finally:
        server.stop()
    for name, value in figures.items():
        print(f"{name:20} {value}")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")  # noqa: ASYNC240


if __name__ == "__main__":
    asyncio.run(main())
