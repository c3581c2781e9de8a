"""Shared plumbing for the peer drivers: stdlib only.

Every peer script runs inside that peer's own virtualenv, so this module may import nothing
outside the standard library. It owns what is identical across peers: command-line options,
free ports, server processes that are always killed, RSS reading, percentiles, and the
workload loops themselves. A peer driver only supplies the primitives (run one 1-activity
workflow, sleep one durable second, ...), so every peer is measured by the same stopwatch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# Workloads in the order they run: the ballast (many sleeping executions) comes last
# because it stays in the peer's server until the script ends.
ALL_WORKLOADS = (
    "wf1",
    "wf10",
    "async_completion",
    "heartbeats",
    "replay",
    "throughput",
    "throughput_10k",
    "timers_10",
    "memory",
    "timers_large",
)

TIMER_PROBES = 10  # 1 s sleeps in flight at once: the "10 pending" case
TIMER_ROUNDS = 10  # rounds of probes per repetition: 100 lateness samples
WARMUP_RUNS = 5  # runs discarded before measuring (connections, caches, imports)
BALLAST_SLEEP_S = 3600  # ballast executions sleep far past the end of the run


class NotApplicable(Exception):
    """A workload this peer has no counterpart for; the message says why."""


# --------------------------------------------------------------------------- options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workloads", default=",".join(w for w in ALL_WORKLOADS if w != "throughput_10k"))
    p.add_argument(
        "--n", type=int, default=1000, help="runs per latency workload / workflows per throughput run"
    )
    p.add_argument(
        "--reps", type=int, default=3, help="repetitions per workload (medians are taken over them)"
    )
    p.add_argument("--pending", type=int, default=10_000, help="sleeping executions for timers_large/memory")
    p.add_argument("--max-seconds", type=float, default=120.0, help="time cap for one repetition of one loop")
    p.add_argument("--workdir", required=True, help="scratch folder for server data (deleted by the caller)")
    p.add_argument("--out", required=True, help="JSON file to write")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A loopback port free right now (the small race is acceptable for a benchmark)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Servers:
    """Child server processes, each in its own process group so that stop() kills the
    whole tree (the Temporal CLI and the Restate npm wrapper may spawn children)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.pidfile: Path | None = None  # read by run.py to reap servers if we are SIGKILLed

    def start(self, cmd: list[str], log: Path, **kw: Any) -> subprocess.Popen:
        fh = open(log, "ab")  # noqa: SIM115 - the file lives as long as the process
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, **kw)
        self.procs.append(proc)
        if self.pidfile:
            with self.pidfile.open("a") as f:
                f.write(f"{proc.pid} {Path(cmd[0]).name}\n")
        return proc

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


def install_sigterm_handler() -> None:
    """Turn SIGTERM (sent by run.py on a timeout) into SystemExit so `finally` blocks run
    and the servers die with us."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


async def wait_until(check: Callable[[], bool], limit_s: float, what: str) -> None:
    """Poll a cheap synchronous check without blocking the event loop (the service under
    test may be a task on this very loop)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {limit_s:.0f} s")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return 200 <= r.status < 300


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                kids += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return kids


def rss_kb(pids: list[int]) -> int:
    """Resident set size of these processes and all their descendants, in KiB."""
    total, todo, seen = 0, list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        todo += _children(pid)
    return total


# --------------------------------------------------------------------------- statistics


def summarize(samples_ms: list[float]) -> dict[str, Any]:
    """p50/p99 by nearest rank: no interpolation, so p99 is a value that was observed."""
    if not samples_ms:
        return {"n": 0}
    s = sorted(samples_ms)

    def rank(q: float) -> float:
        return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]

    return {
        "n": len(s),
        "p50_ms": round(rank(0.50), 3),
        "p99_ms": round(rank(0.99), 3),
        "mean_ms": round(statistics.fmean(s), 3),
        "max_ms": round(s[-1], 3),
    }


# --------------------------------------------------------------------------- workloads


class Driver:
    """What a peer implements. Unimplemented primitives make their workload n/a."""

    name = "peer"

    def __init__(self) -> None:
        self.servers = Servers()

    async def setup(self, workdir: Path) -> None: ...
    async def close(self) -> None: ...
    def versions(self) -> dict[str, str]:
        return {}

    def config(self) -> dict[str, Any]:
        return {}

    async def wf1(self) -> None:
        raise NotApplicable("not implemented")

    async def wf10(self) -> None:
        raise NotApplicable("not implemented")

    async def many_wf1(self, n: int) -> None:
        """Start n 1-activity workflows at once and wait for all results."""
        await asyncio.gather(*(self.wf1() for _ in range(n)))

    async def sleep_probe(self) -> float:
        """Run one workflow that sleeps 1 s durably; return its lateness in ms."""
        raise NotApplicable("not implemented")

    async def start_ballast(self, m: int) -> None:
        """Start m executions that sleep for BALLAST_SLEEP_S; return once all are asleep."""
        raise NotApplicable("not implemented")

    async def async_completion(self) -> float:
        """Run a workflow whose activity is completed from outside; return ms from the
        completion request to the workflow result."""
        raise NotApplicable("not implemented")

    async def heartbeats(self, seconds: float) -> int:
        raise NotApplicable("not implemented")

    async def replay(self) -> dict[str, Any]:
        raise NotApplicable("not implemented")


async def timed_loop(fn: Callable[[], Awaitable[Any]], n: int, max_s: float) -> list[float]:
    """Run fn sequentially n times (or until max_s), return each duration in ms."""
    samples: list[float] = []
    deadline = time.perf_counter() + max_s
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - t0) * 1000)
        if time.perf_counter() > deadline:
            break
    return samples


async def sample_loop(fn: Callable[[], Awaitable[float]], n: int, max_s: float) -> list[float]:
    """Like timed_loop, for primitives that measure themselves and return ms."""
    samples: list[float] = []
    deadline = time.perf_counter() + max_s
    for _ in range(n):
        samples.append(await fn())
        if time.perf_counter() > deadline:
            break
    return samples


async def timer_rounds(d: Driver) -> list[float]:
    """TIMER_ROUNDS rounds of TIMER_PROBES concurrent 1 s sleeps: lateness samples in ms."""
    out: list[float] = []
    for _ in range(TIMER_ROUNDS):
        out += await asyncio.gather(*(d.sleep_probe() for _ in range(TIMER_PROBES)))
    return out


async def throughput(d: Driver, n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    await d.many_wf1(n)
    elapsed = time.perf_counter() - t0
    return {"n": n, "elapsed_s": round(elapsed, 3), "wf_per_s": round(n / elapsed, 1)}


class Runner:
    """Runs the requested workloads on one driver and collects per-repetition results."""

    def __init__(self, d: Driver, args: argparse.Namespace) -> None:
        self.d, self.args = d, args
        self.results: dict[str, Any] = {}

    async def run_all(self, wanted: list[str]) -> None:
        await self._warmup(wanted)
        for w in ALL_WORKLOADS:
            if w in wanted and w not in self.results:
                await self._run_one(w)

    async def _warmup(self, wanted: list[str]) -> None:
        # First runs pay for connections, sticky caches and imports: not what we measure.
        for fn in (self.d.wf1, self.d.wf10):
            with contextlib.suppress(NotApplicable):
                for _ in range(WARMUP_RUNS):
                    await fn()

    async def _run_one(self, w: str) -> None:
        t0 = time.monotonic()
        print(f"[{self.d.name}] {w} ...", file=sys.stderr, flush=True)
        try:
            await getattr(self, f"_w_{w}")()
        except NotApplicable as e:
            self.results[w] = {"na": str(e)}
        except Exception as e:  # one failing workload must not hide the others
            traceback.print_exc()
            self.results[w] = {"error": f"{type(e).__name__}: {e}"}
        print(f"[{self.d.name}] {w} done in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)

    async def _latency_reps(self, w: str, once: Callable[[], Awaitable[list[float]]]) -> None:
        reps, samples = [], []
        for _ in range(self.args.reps):
            s = await once()
            reps.append(summarize(s))
            samples += s
        self.results[w] = {"reps": reps, "samples_ms": [round(x, 3) for x in samples]}

    async def _w_wf1(self) -> None:
        a = self.args
        await self._latency_reps("wf1", lambda: timed_loop(self.d.wf1, a.n, a.max_seconds))

    async def _w_wf10(self) -> None:
        a = self.args
        await self._latency_reps("wf10", lambda: timed_loop(self.d.wf10, a.n, a.max_seconds))

    async def _w_async_completion(self) -> None:
        a = self.args
        await self._latency_reps(
            "async_completion", lambda: sample_loop(self.d.async_completion, a.n, a.max_seconds)
        )

    async def _w_timers_10(self) -> None:
        await self._latency_reps("timers_10", lambda: timer_rounds(self.d))

    async def _w_throughput(self) -> None:
        self.results["throughput"] = {
            "reps": [await throughput(self.d, self.args.n) for _ in range(self.args.reps)]
        }

    async def _w_throughput_10k(self) -> None:
        self.results["throughput_10k"] = {"reps": [await throughput(self.d, 10_000)]}

    async def _w_heartbeats(self) -> None:
        reps = []
        for _ in range(self.args.reps):
            count = await self.d.heartbeats(3.0)
            reps.append({"count": count, "seconds": 3.0, "per_s": round(count / 3.0, 1)})
        self.results["heartbeats"] = {"reps": reps}

    async def _w_replay(self) -> None:
        self.results["replay"] = {"reps": [await self.d.replay() for _ in range(self.args.reps)]}

    async def _w_memory(self) -> None:
        """Start the ballast once: RSS growth per sleeping execution. timers_large then
        probes while the ballast is still pending. Servers and this process (driver plus
        worker/service/executor) are read apart, as their memory behaves differently."""
        m = max(0, self.args.pending - TIMER_PROBES)
        before = self._rss()
        t0 = time.perf_counter()
        await self.d.start_ballast(m)
        started_s = time.perf_counter() - t0
        await asyncio.sleep(1.0)  # let buffers and caches settle before reading RSS
        after = self._rss()
        rep: dict[str, Any] = {"executions": m, "ballast_start_s": round(started_s, 1)}
        for part in ("servers", "process", "total"):
            rep[f"{part}_before_kb"], rep[f"{part}_after_kb"] = before[part], after[part]
            rep[f"{part}_kb_per_exec"] = round((after[part] - before[part]) / max(1, m), 3)
        rep["kb_per_exec"] = rep.pop("total_kb_per_exec")
        self.results["memory"] = {"reps": [rep]}

    def _rss(self) -> dict[str, int]:
        gc.collect()  # garbage from earlier workloads is not memory the ballast holds
        servers, process = rss_kb(self.d.servers.pids()), rss_kb([os.getpid()])
        return {"servers": servers, "process": process, "total": servers + process}

    async def _w_timers_large(self) -> None:
        if "memory" not in self.results:
            await self._w_memory()
        if "error" in self.results["memory"] or "na" in self.results["memory"]:
            raise RuntimeError(f"ballast failed: {self.results['memory']}")
        await self._latency_reps("timers_large", lambda: timer_rounds(self.d))
        self.results["timers_large"]["pending"] = self.args.pending


def main(driver: Driver) -> None:
    """Entry point of every peer script: run, always stop the servers, write the JSON."""
    install_sigterm_handler()
    args = parse_args()
    wanted = [w.strip() for w in args.workloads.split(",") if w.strip()]
    out: dict[str, Any] = {"system": driver.name, "python": platform.python_version()}
    t0 = time.monotonic()
    try:
        out.update(asyncio.run(_run(driver, args, wanted)))
    except BaseException as e:
        traceback.print_exc()
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        driver.servers.stop()  # idempotent; covers a close() that never ran
    out["wall_s"] = round(time.monotonic() - t0, 1)
    Path(args.out).write_text(json.dumps(out, indent=1))


async def _run(d: Driver, args: argparse.Namespace, wanted: list[str]) -> dict[str, Any]:
    try:
        d.servers.pidfile = Path(args.workdir) / "server.pids"
        await d.setup(Path(args.workdir))
        runner = Runner(d, args)
        await runner.run_all(wanted)
        return {"versions": d.versions(), "config": d.config(), "workloads": runner.results}
    finally:
        await d.close()
