"""A big population of sleeping executions: start rate, the runtime's memory, every timer fires.

Starts a NATS server (embedded, temporary store; or ``--url``) and one Perdure runtime as a
separate process, then starts ``--n`` executions (default 100,000) of ``nap``, each sleeping
a random ``--min``..``--max`` seconds (30 to 60), in bulk with the client (``--inflight``
starts awaiting their ack at once). While they sleep and wake it samples the runtime's
``/proc/<pid>/status`` (VmRSS, and VmHWM: the peak), and it counts completions from the
executions index (one subscription on the bucket's subjects, no polling). It reports:

- the start rate (executions/s, until the last start was acknowledged),
- the runtime's peak RSS (and the server's), with ``--cache-size`` passed to the runtime
  (live executions kept in memory) to show memory bounded by the cache,
- how many completed, how long until all had, and how late their timers fired.

Not part of the test suite. Run from the repository root with the project venv:

    python bench/population.py --n 10000
    python bench/population.py                     # 100,000
    python bench/population.py --n 100000 --cache-size 2000 --json out.json

The runtime imports this file as its workflow module (``perdure worker population``), so
everything but ``nap`` runs only under ``__main__``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from perdure import sleep, workflow
from perdure.runtime.nats_client import nats_core


@workflow
async def nap(seconds: float) -> float:
    """Sleep durably; return how late the timer fired (workflow time is the step's wall clock)."""
    start = workflow.time()
    await sleep(seconds)
    return workflow.time() - start - seconds


# ---------------------------------------------------------------------- measurement


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (kB) and CPU seconds of a live process, from /proc."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out["cpu_ticks"] = int(fields[11]) + int(fields[12])  # utime + stime
    return out


class Sampler:
    """Samples a process's memory every ``interval`` seconds in the background."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []  # (t, VmRSS kB)
        self.peak_hwm = 0
        self.last: dict[str, int] = {}

    async def run(self, t0: float) -> None:
        while True:
            status = proc_status(self.pid)
            if status:
                self.last = status
                self.peak_hwm = max(self.peak_hwm, status.get("VmHWM", 0))
                self.samples.append((time.monotonic() - t0, status.get("VmRSS", 0)))
            await asyncio.sleep(self.interval)

    def rss_at_fraction(self, fraction: float) -> int:
        return (
            self.samples[min(len(self.samples) - 1, int(fraction * len(self.samples)))][1]
            if self.samples
            else 0
        )


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))] if s else float("nan")


def mb(kb: int) -> str:
    return f"{kb / 1024:.0f} MB"


# ---------------------------------------------------------------------------- run


def spawn_runtime(
    url: str, namespace: str, cache_size: int | None, log_level: str, log_path: Path
) -> subprocess.Popen[bytes]:
    """``perdure worker population`` as a separate process, its log in ``log_path``."""
    args = [
        sys.executable, "-m", "perdure.runtime.daemon", "worker", "population",
        "--url", url, "--namespace", namespace, "--name", "population-rt",
    ]  # fmt: skip
    if cache_size:
        args += ["--cache-size", str(cache_size)]
    here = str(Path(__file__).resolve().parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p),
        "PERDURE_LOG_LEVEL": log_level,
    }
    with log_path.open("w") as log:  # the child keeps its own descriptor
        return subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from perdure import Client, EmbeddedServer

    # SIGTERM cancels the run, so that the runtime and the server are stopped on the way out.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    workdir = Path(tempfile.mkdtemp(prefix="perdure-population-"))
    server = None
    url = args.url
    if not url:
        server = EmbeddedServer(store_dir=workdir / "nats")
        server.start()
        url = server.url
    namespace = args.namespace or "pop" + uuid.uuid4().hex[:8]
    log_path = workdir / "runtime.log"
    runtime = spawn_runtime(url, namespace, args.cache_size, args.log_level, log_path)
    client = None
    tasks: list[asyncio.Task[Any]] = []
    try:
        client = await Client.connect(url, namespace=namespace)
        deadline = time.monotonic() + 30
        while "runtime.started" not in log_path.read_text():
            if runtime.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the runtime did not start:\n{log_path.read_text()[-3000:]}")
            await asyncio.sleep(0.1)

        rng = random.Random(args.seed)
        naps = [rng.uniform(args.min, args.max) for _ in range(args.n)]
        ids = [f"nap-{i}" for i in range(args.n)]
        done: dict[str, float] = {}  # execution -> when its COMPLETED index entry was seen
        seen: dict[str, float] = {}  # execution -> when its first index entry was seen (first step)
        lateness: list[float] = []
        failed: collections.Counter[str] = collections.Counter()
        bucket = client.names.executions_bucket
        sub, messages = await client.conn.subscribe(f"$KV.{bucket}.>")
        await client.conn.flush()

        t0 = time.monotonic()

        async def count() -> None:
            async for msg in messages:
                if not msg.data:
                    continue
                record = json.loads(msg.data)
                execution = record.get("execution_id", "")
                status = record.get("status")
                seen.setdefault(execution, time.monotonic() - t0)
                if status == "COMPLETED" and execution not in done:
                    done[execution] = time.monotonic() - t0
                    lateness.append(float(record.get("result", 0.0)))
                elif status in ("FAILED", "CANCELLED", "TERMINATED", "TIMED_OUT"):
                    failed[status] += 1

        runtime_mem, server_mem = Sampler(runtime.pid), Sampler(server.pid) if server and server.pid else None
        tasks.append(asyncio.ensure_future(count()))
        tasks.append(asyncio.ensure_future(runtime_mem.run(t0)))
        if server_mem:
            tasks.append(asyncio.ensure_future(server_mem.run(t0)))
        started = 0
        progress_every = 5.0

        async def progress() -> None:
            js = nats_core(client.conn).jetstream()
            while True:
                await asyncio.sleep(progress_every)
                with contextlib.suppress(Exception):
                    inbox = (await js.stream_info(client.names.inbox_stream)).state.messages
                    print(
                        f"  t={time.monotonic() - t0:6.1f}s started={started} first steps={len(seen)} completed={len(done)} "
                        f"inbox backlog={inbox} runtime RSS={mb(runtime_mem.last.get('VmRSS', 0))} "
                        f"(peak {mb(runtime_mem.peak_hwm)})",
                        flush=True,
                    )

        tasks.append(asyncio.ensure_future(progress()))

        # ------------------------------------------------------------ bulk start
        semaphore = asyncio.Semaphore(args.inflight)

        async def start(i: int) -> None:
            nonlocal started
            async with semaphore:
                await client.start(nap, naps[i], id=ids[i])
                started += 1

        print(
            f"starting {args.n:,} executions sleeping {args.min:g}-{args.max:g} s (namespace {namespace})",
            flush=True,
        )
        await asyncio.gather(*(start(i) for i in range(args.n)))
        start_seconds = time.monotonic() - t0
        start_rate = args.n / start_seconds
        print(f"started {args.n:,} in {start_seconds:.1f} s: {start_rate:,.0f} executions/s", flush=True)

        # ------------------------------------------------------------ completion
        last_due = start_seconds + args.max
        last_progress, last_count = time.monotonic(), 0
        while len(done) + sum(failed.values()) < args.n:
            await asyncio.sleep(0.5)
            if len(done) != last_count:
                last_progress, last_count = time.monotonic(), len(done)
            elif time.monotonic() - t0 > last_due and time.monotonic() - last_progress > args.stall:
                print(f"no completion for {args.stall:g} s: giving up", flush=True)
                break
        all_done = time.monotonic() - t0
        await sub.stop()

        missing = [i for i in ids if i not in done]
        if missing:  # the subscription may have missed an update: ask the index
            for execution in missing[:2000]:
                with contextlib.suppress(Exception):
                    d = await client.describe(execution)
                    if d.status == "COMPLETED":
                        done[execution] = all_done
            missing = [i for i in ids if i not in done]

        warnings = collections.Counter()
        for line in log_path.read_text().splitlines():
            if "[warning" in line or "[error" in line:
                warnings[line.split("]", 1)[1].split()[0] if "]" in line else line[:40]] += 1
        after_all_done = proc_status(runtime.pid)
        result = {
            "n": args.n,
            "sleep_s": [args.min, args.max],
            "cache_size": args.cache_size or "default (10,000)",
            "start_seconds": round(start_seconds, 2),
            "start_rate_per_s": round(start_rate),
            "all_first_steps_after_s": round(max(seen.values()), 1) if len(seen) == args.n else None,
            "completed": len(done),
            "failed": dict(failed),
            "missing": len(missing),
            "all_completed_after_s": round(max(done.values()), 1) if done and not missing else None,
            "last_timer_due_after_s": round(last_due, 1),
            "waited_s": round(all_done, 1),
            "timer_lateness_s": {
                "p50": round(pct(lateness, 0.5), 3),
                "p99": round(pct(lateness, 0.99), 3),
                "max": round(max(lateness), 3) if lateness else None,
            },
            "runtime_peak_rss_mb": round(runtime_mem.peak_hwm / 1024),
            "runtime_rss_at_end_mb": round(after_all_done.get("VmRSS", 0) / 1024),
            "runtime_cpu_s": round(after_all_done.get("cpu_ticks", 0) / os.sysconf("SC_CLK_TCK"), 1),
            "server_peak_rss_mb": round(server_mem.peak_hwm / 1024) if server_mem else None,
            "runtime_warnings": dict(warnings.most_common(10)),
            "runtime_log": str(log_path),
        }
        return result
    finally:
        for task in tasks:
            task.cancel()
        if client is not None:
            await client.close()
        if runtime.poll() is None:
            runtime.terminate()
            try:
                runtime.wait(30)
            except subprocess.TimeoutExpired:
                runtime.kill()
        if server is not None:
            server.stop()
            if not args.keep:
                shutil.rmtree(workdir / "nats", ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="executions to start (default 100,000)")
    parser.add_argument("--min", type=float, default=30.0, help="shortest sleep, seconds")
    parser.add_argument("--max", type=float, default=60.0, help="longest sleep, seconds")
    parser.add_argument("--cache-size", type=int, default=None, help="passed to the runtime (default 10,000)")
    parser.add_argument("--inflight", type=int, default=1000, help="starts awaiting their ack at once")
    parser.add_argument("--url", default=None, help="an existing NATS server (default: start one)")
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stall", type=float, default=120.0, help="give up after this long without progress")
    parser.add_argument("--log-level", default="INFO", help="the runtime's log level")
    parser.add_argument("--keep", action="store_true", help="keep the server's store")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
