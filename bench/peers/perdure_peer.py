"""Perdure peer: a nats-server started by the driver (perdure.EmbeddedServer, file storage in
the workdir), one Perdure runtime in a separate process (`python -m perdure.runtime.daemon
worker bench/peers/perdure_app.py`, on uvloop as the daemon always is), and this driver as
the client (`Client.start`, `handle.result()`, `client.complete_activity`, ...).

Runs with the project's own interpreter (perdure is installed there). Unlike the peers, whose
worker shares the driver's process, Perdure's runtime is a process of its own, as a deployed
`perdure worker` is: it is counted with the servers in the memory split, and reported apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any

import nats
import perdure_app as app

from perdure import Client, EmbeddedServer
from perdure.actors.registry import Registry
from perdure.actors.replayer import replay_steps
from perdure.runtime import codec
from perdure.runtime.messages import ExecutionRecord

import common

NAMESPACE = "bench"
APP = Path(__file__).resolve().parent / "perdure_app.py"
RESULT_TIMEOUT = 120.0
REPLAY_ACTIVITIES = 333  # 3 events each (completed, closed, scheduled) + start, signal, end: ~1,000
# Activities heartbeating at once. One runtime runs up to Settings.activity_concurrency = 64,
# but after a burst its work consumer leaves up to 15 of those slots unrequested (it pulls
# again only when a quarter of its credit is free), and an attempt that waits for a slot
# longer than its heartbeat timeout (1 s here: the record's TTL runs from scheduling) is
# closed before it starts: 64 fails from the second repetition on; 48 always fits.
HEARTBEAT_ACTIVITIES = 48
CLIENT_HEARTBEAT_TOKENS = 10  # Temporal's figure: 10 open activities heartbeated by the client


class PerdureDriver(common.Driver):
    name = "perdure"

    def __init__(self) -> None:
        super().__init__()
        self.extra: dict[str, Any] = {}
        self.runtime_starts = 0
        self.namespace = NAMESPACE
        self.token_waiters: dict[str, asyncio.Future[str]] = {}

    # ----------------------------------------------------------------- processes

    async def setup(self, workdir: Path) -> None:
        self.extra["load_avg_at_start"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
        self.workdir = workdir
        self.server = EmbeddedServer(store_dir=workdir / "nats", log_file=workdir / "nats-server.log")
        self.server.start()
        self._adopt(self.server)
        self.url = self.server.url
        await self._start_runtime()
        self.client = await Client.connect(self.url, namespace=self.namespace)
        self.nc = await nats.connect(self.url, name="bench-driver-tokens")
        await self.nc.subscribe(app.TOKENS_SUBJECT, cb=self._on_token)
        await self.nc.flush()

    def _adopt(self, server: EmbeddedServer) -> None:
        """Let common.Servers stop, reap and weigh the embedded server like any peer's server."""
        proc = server._proc
        assert proc is not None
        self.servers.procs.append(proc)
        if self.servers.pidfile:
            with self.servers.pidfile.open("a") as f:
                f.write(f"{proc.pid} nats-server\n")

    async def _start_runtime(self) -> None:
        self.runtime_starts += 1
        namespace = self.namespace
        log = self.workdir / f"runtime-{self.runtime_starts}.log"
        env = {**os.environ, "BENCH_NATS_URL": self.url, "PYTHONPATH": str(APP.parent)}
        cmd = [sys.executable, "-m", "perdure.runtime.daemon", "worker", str(APP)]
        cmd += ["--url", self.url, "--namespace", namespace, "--name", f"bench-rt-{self.runtime_starts}"]
        self.runtime = self.servers.start(cmd, log, env=env)
        await common.wait_until(lambda: "runtime.started" in log.read_text(), 60, "perdure runtime")

    async def _restart_runtime(self, namespace: str | None = None) -> None:
        """SIGTERM (the runtime drains and hands its partitions over), then a fresh process,
        in another namespace if one is given (the client follows)."""
        old = self.runtime
        with contextlib.suppress(ProcessLookupError):
            os.killpg(old.pid, 15)
        await asyncio.to_thread(old.wait, 30)
        self.servers.procs.remove(old)
        if namespace is not None and namespace != self.namespace:
            self.namespace = namespace
            await self.client.close()
            self.client = await Client.connect(self.url, namespace=namespace)
        await self._start_runtime()

    async def until_runtime_idle(self, limit_s: float = 180.0) -> float:
        """Seconds until the runtime process used under 5% of a core over half a second."""
        t0 = time.monotonic()
        last = cpu_seconds(self.runtime.pid)
        while time.monotonic() - t0 < limit_s:
            await asyncio.sleep(0.5)
            now = cpu_seconds(self.runtime.pid)
            if now - last < 0.025:
                break
            last = now
        return time.monotonic() - t0

    async def close(self) -> None:
        if hasattr(self, "nc"):
            with contextlib.suppress(Exception):
                await self.nc.close()
        if hasattr(self, "client"):
            with contextlib.suppress(Exception):
                await self.client.close()
        self.servers.stop()

    def versions(self) -> dict[str, str]:
        srv = subprocess.run([self.server.binary, "--version"], capture_output=True, text=True).stdout
        return {
            "perdure": f"{version('perdure')} ({engine_revision()})",
            "nats-py": version("nats-py"),
            "msgspec": version("msgspec"),
            "uvloop": version("uvloop"),
            "server": srv.strip(),
        }

    def config(self) -> dict[str, Any]:
        self.extra["load_avg_at_end"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
        return {
            "server": "nats-server (EmbeddedServer, file store), started by the driver",
            "runtime": "1 `perdure worker` process, default Settings (12 partitions, uvloop)",
            "driver": "Client on uvloop",
            **self.extra,
        }

    # ---------------------------------------------------------------- primitives

    async def _run(self, wf: Any, arg: Any, prefix: str = "b") -> Any:
        handle = await self.client.start(wf, arg, id=f"{prefix}-{uuid.uuid4().hex}")
        return await handle.result(timeout=RESULT_TIMEOUT)

    async def wf1(self) -> None:
        await self._run(app.chain, 1)

    async def wf10(self) -> None:
        await self._run(app.chain, 10)

    async def sleep_probe(self) -> float:
        return float(await self._run(app.sleeper, 1.0, "t"))

    async def start_ballast(self, m: int) -> None:
        """m executions sleeping an hour; 'asleep' = their index entry says RUNNING, which the
        runtime writes in the same step (and the same pipelined effects) as the timer."""
        bucket = self.client.names.executions_bucket
        asleep: set[str] = set()

        async def on_index(msg: Any) -> None:
            if msg.subject.rsplit(".", 1)[1].startswith("ballast-") and msg.data:
                record = codec.decode(codec.execution_record, msg.data, what="index")
                if isinstance(record, ExecutionRecord) and record.status == "RUNNING":
                    asleep.add(record.execution_id)

        sub = await self.nc.subscribe(f"$KV.{bucket}.>", cb=on_index)
        await self.nc.flush()
        gate = asyncio.Semaphore(200)

        async def one(i: int) -> None:
            async with gate:
                await self.client.start(app.ballast, float(common.BALLAST_SLEEP_S), id=f"ballast-{i}")

        try:
            await asyncio.gather(*(one(i) for i in range(m)))
            await common.wait_until(lambda: len(asleep) >= m, 600, "Perdure ballast")
        finally:
            await sub.unsubscribe()

    async def _on_token(self, msg: Any) -> None:
        body = json.loads(msg.data)
        fut = self.token_waiters.get(body["id"])
        if fut is not None and not fut.done():
            fut.set_result(body["token"])

    async def _start_external(self, prefix: str) -> tuple[Any, str]:
        execution_id = f"{prefix}-{uuid.uuid4().hex}"
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.token_waiters[execution_id] = fut
        try:
            handle = await self.client.start(app.external, None, id=execution_id)
            token = await asyncio.wait_for(fut, RESULT_TIMEOUT)
        finally:
            self.token_waiters.pop(execution_id, None)
        return handle, token

    async def async_completion(self) -> float:
        handle, token = await self._start_external("x")
        t0 = time.perf_counter()
        await self.client.complete_activity(token, 7)
        await handle.result(timeout=RESULT_TIMEOUT)
        return (time.perf_counter() - t0) * 1000

    async def heartbeats(self, seconds: float) -> int:
        """HEARTBEAT_ACTIVITIES activities, each calling ctx.heartbeat() back-to-back for
        `seconds` with a heartbeat timeout so small that none is throttled: every call is a
        record read + re-put by the runtime. The count is what the activities sent.

        Also measured (config notes): Temporal's method, 10 async activities heartbeated
        back-to-back from the client (`client.heartbeat_activity`, one request each)."""
        handles = [
            await self.client.start(app.beats, seconds, id=f"hb-{uuid.uuid4().hex}")
            for _ in range(HEARTBEAT_ACTIVITIES)
        ]
        results = await asyncio.gather(
            *(h.result(timeout=RESULT_TIMEOUT) for h in handles), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:  # counted as 0 (conservative), and said in the notes
            self.extra.setdefault("heartbeat_workflows_failed", []).append(f"{len(failed)}: {failed[0]}")
        if len(failed) == len(results):
            raise failed[0]
        in_activity = int(sum(r for r in results if not isinstance(r, BaseException)))
        rpc = await self._client_heartbeats(seconds)
        self.extra.setdefault("heartbeats_in_activity_per_s", []).append(round(in_activity / seconds))
        self.extra.setdefault("heartbeats_client_rpc_x10_per_s", []).append(round(rpc / seconds))
        return in_activity

    async def _client_heartbeats(self, seconds: float) -> int:
        started = [await self._start_external("hbc") for _ in range(CLIENT_HEARTBEAT_TOKENS)]
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds

        async def beat(token: str) -> int:
            n = 0
            while loop.time() < end:
                await self.client.heartbeat_activity(token, n)
                n += 1
            await self.client.complete_activity(token, 0)
            return n

        counts = await asyncio.gather(*(beat(t) for _, t in started))
        await asyncio.gather(*(h.result(timeout=RESULT_TIMEOUT) for h, _ in started))
        return sum(counts)

    async def replay(self) -> dict[str, Any]:
        """Cold replay in a fresh runtime: a workflow ran REPLAY_ACTIVITIES activities and waits
        for a signal; the runtime is restarted (SIGTERM, new process); the signal then makes
        the new runtime read the whole history (one batch read), replay it through the
        workflow code, append a step and index the result. ms = signal sent -> result seen.
        baseline_ms: the same for a workflow with no activities (1-step history), so the
        difference is the load + replay of ~1,000 events. fetch_ms / replay_ms: the same
        history fetched by a client and replayed in this process with
        perdure.actors.replayer.replay_steps (Temporal's Replayer method)."""
        big = await self.client.start(app.journal, REPLAY_ACTIVITIES, id=f"replay-{uuid.uuid4().hex}")
        base = await self.client.start(app.journal, 0, id=f"replay0-{uuid.uuid4().hex}")
        for h in (big, base):  # waiting for the signal: the last activity is in history
            await self._until_waiting(h, REPLAY_ACTIVITIES if h is big else 0)
        await self._restart_runtime()
        await self.wf1()  # warm the fresh runtime's code paths, not the replayed execution
        settled = await self.until_runtime_idle()  # it re-fires old timer markers first
        base_ms = await self._signal_and_wait(base)
        ms = await self._signal_and_wait(big)
        t0 = time.perf_counter()
        fetched = await big.history_steps()
        t1 = time.perf_counter()
        report = replay_steps(Registry([app.journal, app.noop_untimed]), big.id, fetched)
        t2 = time.perf_counter()
        if not report.ok:
            raise RuntimeError(f"replay diverged: {report}")
        return {
            "events": sum(len(s.inputs) + len(s.decisions) for s in fetched),
            "activities": REPLAY_ACTIVITIES,
            "history_steps": len(fetched),
            "ms": round(ms, 2),
            "baseline_ms": round(base_ms, 2),
            "fetch_ms": round((t1 - t0) * 1000, 2),
            "replay_ms": round((t2 - t1) * 1000, 2),
            "fresh_runtime_settled_s": round(settled, 1),
        }

    async def _until_waiting(self, handle: Any, k: int) -> None:
        for _ in range(1500):
            with contextlib.suppress(Exception):
                steps = await handle.history_steps()
                done = sum(1 for s in steps for e in s.inputs if type(e).__name__ == "ActivityCompleted")
                if done >= k:
                    return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{handle.id} did not reach its signal wait")

    async def _signal_and_wait(self, handle: Any) -> float:
        t0 = time.perf_counter()
        await handle.signal("go")
        await handle.result(timeout=RESULT_TIMEOUT)
        return (time.perf_counter() - t0) * 1000


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def engine_revision() -> str:
    """The commit the engine was measured at, and whether its sources had local changes."""
    import perdure

    root = Path(perdure.__file__).resolve().parent
    git = ["git", "-C", str(root)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "actors", "runtime", "client", "__init__.py"],
            capture_output=True,
            text=True,
        ).stdout
    except OSError:
        return "revision unknown"
    return f"git {head.strip() or '?'}" + (" + uncommitted engine changes" if dirty.strip() else "")


class PerdureRunner(common.Runner):
    """common.Runner, plus the runtime process's own share in the memory split (it is one of
    `servers` here). Timing is untouched: everything else is the shared code."""

    def _rss(self) -> dict[str, int]:
        out = super()._rss()
        d = self.d
        assert isinstance(d, PerdureDriver)
        rt = common.rss_kb([d.runtime.pid])
        d.extra.setdefault("_runtime_rss_kb", []).append(rt)
        return out

    async def _w_memory(self) -> None:
        """Measured on a fresh runtime process in a fresh namespace (same server). The runtime
        keeps up to Settings.cache_size (10,000) executions in memory, closed ones included, so
        after the earlier workloads its cache is full and sleeping executions would only
        replace closed ones (RSS growth ~0); and a restarted runtime re-fires the expiry marker
        of every timer cancelled in the last hour, loading each of those executions (after the
        earlier workloads, thousands) - a fresh runtime in the old namespace is full at once.
        timers_large then probes this runtime, with the ballast pending."""
        d = self.d
        assert isinstance(d, PerdureDriver)
        await d._restart_runtime(namespace=f"{NAMESPACE}mem")
        for _ in range(common.WARMUP_RUNS):
            await d.wf1()
        settled = await d.until_runtime_idle()
        d.extra["memory_fresh_runtime_settled_s"] = round(settled, 1)
        await super()._w_memory()
        readings = d.extra.pop("_runtime_rss_kb", [])
        rep = self.results["memory"].get("reps", [None])[0]
        if rep and len(readings) >= 2:
            before, after = readings[-2], readings[-1]
            rep["runtime_before_kb"], rep["runtime_after_kb"] = before, after
            rep["runtime_kb_per_exec"] = round((after - before) / max(1, rep["executions"]), 3)
            d.extra["memory_runtime_process_kib_per_exec"] = rep["runtime_kb_per_exec"]


def main() -> None:
    try:
        import uvloop
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    common.Runner = PerdureRunner  # type: ignore[misc]
    common.main(PerdureDriver())


if __name__ == "__main__":
    main()
