"""Profile Perdure's hot paths with py-spy: the runtime process and the driver (client).

    /work/venv/bin/python bench/profile_perdure.py --mode wf1 --seconds 20
    /work/venv/bin/python bench/profile_perdure.py --mode throughput --seconds 20

Same set-up as bench/peers/perdure_peer.py: a nats-server (EmbeddedServer), one `perdure
worker` process (uvloop) hosting bench/peers/perdure_app.py, and this process as the client
(uvloop). While the workload runs, `py-spy record` samples the runtime and this process;
the raw stacks are folded into "self" and "inclusive" shares per function and the busy
fraction of each process (py-spy drops idle samples). Outputs in --out (default
bench/results/profile/): <mode>-<process>.svg (flame graph), .txt (collapsed stacks) and
a summary printed and saved as <mode>-summary.md. Needs py-spy (`pip install py-spy`).
"""

# ruff: noqa: ASYNC110, ASYNC220, ASYNC240  (a command-line tool: blocking set-up is fine)

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))

import perdure_app as app  # noqa: E402

from perdure import Client, EmbeddedServer  # noqa: E402

APP = HERE / "peers" / "perdure_app.py"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("wf1", "wf10", "throughput", "async"), default="wf1")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=1000, help="workflows in flight (throughput)")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--out", default=str(HERE / "results" / "profile"))
    p.add_argument("--no-spy", action="store_true", help="just run the workload (timing only)")
    p.add_argument("--spy", default="runtime", help="processes to sample: runtime,driver")
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    p.add_argument(
        "--gc-threshold",
        type=int,
        default=0,
        help="experiment: start the runtime with gc.freeze() and gc.set_threshold(N) (engine unchanged)",
    )
    p.add_argument("--cache-size", type=int, default=0, help="experiment: the runtime's --cache-size")
    p.add_argument("--prefill", type=int, default=0, help="run this many workflows before measuring")
    p.add_argument("--trace", action="store_true", help="per-hop timing of wf1 (bench/perdure_trace.py)")
    p.add_argument(
        "--strace",
        choices=("runtime", "nats-server", "driver"),
        help="count this process's syscalls (strace -c) instead of sampling",
    )
    return p.parse_args()


def spy(pid: int, out: Path, fmt: str, seconds: float, rate: int, native: bool) -> subprocess.Popen:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    cmd = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(int(seconds))]
    cmd += ["--format", fmt, "--output", str(out)] + (["--native"] if native else ["--nonblocking"])
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def fold(raw: Path, seconds: float, rate: int, top: int = 25) -> list[str]:
    """Self and inclusive shares per function from py-spy's collapsed stacks."""
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        total += count
        frames = [_short(f) for f in stack.split(";")]
        self_c[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if not total:
        return ["(no samples)"]
    busy = total / (seconds * rate)
    lines = [f"samples: {total} ({busy:.0%} of wall time busy)", "", "| self | function |", "|---:|---|"]
    lines += [f"| {c / total:.1%} | `{f}` |" for f, c in self_c.most_common(top)]
    lines += ["", "| inclusive | function |", "|---:|---|"]
    lines += [f"| {c / total:.1%} | `{f}` |" for f, c in incl.most_common(top * 2)]
    return lines


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"; line numbers would split functions.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{name} ({short})"


DRIVER_STAMPS: dict[str, dict[str, float]] = {}


async def workload(client: Client, mode: str, seconds: float, concurrency: int) -> tuple[str, int]:
    done = 0
    end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    if mode in ("wf1", "wf10"):
        k = 1 if mode == "wf1" else 10
        lat = []
        while time.perf_counter() < end:
            s = time.perf_counter()
            eid = f"p-{uuid.uuid4().hex}"
            t_start = time.time()
            h = await client.start(app.chain, k, id=eid)
            t_started = time.time()
            await h.result(timeout=60)
            DRIVER_STAMPS[eid] = {"start": t_start, "started": t_started, "result": time.time()}
            lat.append((time.perf_counter() - s) * 1000)
            done += 1
        lat.sort()
        return (
            f"{done} sequential {mode} in {seconds:.0f} s: p50 {lat[len(lat) // 2]:.2f} ms, "
            f"p99 {lat[int(len(lat) * 0.99)]:.2f} ms",
            done,
        )
    if mode == "throughput":
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            nonlocal done
            async with gate:
                h = await client.start(app.chain, 1, id=f"p-{uuid.uuid4().hex}")
                await h.result(timeout=120)
                done += 1

        tasks: set[asyncio.Task[None]] = set()
        while time.perf_counter() < end:
            await gate.acquire()
            gate.release()
            t = asyncio.ensure_future(one())
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        el = time.perf_counter() - t0
        return (
            f"{done} 1-activity workflows, {concurrency} in flight, in {el:.1f} s: {done / el:.0f} wf/s",
            done,
        )
    raise SystemExit(f"mode {mode} not implemented")


async def main() -> None:
    a = parse()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="perdure-profile-"))
    server = EmbeddedServer(store_dir=work / "nats")
    server.start()
    env = {**os.environ, "BENCH_NATS_URL": server.url, "PYTHONPATH": str(APP.parent)}
    log = work / "runtime.log"
    trace_file = work / "trace.jsonl"
    if a.trace:
        boot = f"import sys; sys.path.insert(0, {str(HERE)!r}); import perdure_trace; "
        boot += f"perdure_trace.install({str(trace_file)!r}); from perdure.runtime.daemon import main; main()"
        cmd = [sys.executable, "-c", boot, "worker", str(APP), "--url", server.url]
    elif a.gc_threshold:
        boot = f"import gc; gc.freeze(); gc.set_threshold({a.gc_threshold}, 50, 1000); "
        boot += "from perdure.runtime.daemon import main; main()"
        cmd = [sys.executable, "-c", boot, "worker", str(APP), "--url", server.url]
    else:
        cmd = [sys.executable, "-m", "perdure.runtime.daemon", "worker", str(APP), "--url", server.url]
    cmd += ["--namespace", "prof", "--name", "prof-rt"]
    if a.cache_size:
        cmd += ["--cache-size", str(a.cache_size)]
    with log.open("wb") as fh:
        rt = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while "runtime.started" not in log.read_text():
            await asyncio.sleep(0.1)
        client = await Client.connect(server.url, namespace="prof")
        for _ in range(20):  # warm-up
            await (await client.start(app.chain, 1)).result(timeout=30)
        if a.prefill:
            gate = asyncio.Semaphore(500)

            async def fill() -> None:
                async with gate:
                    await (await client.start(app.chain, 1)).result(timeout=120)

            await asyncio.gather(*(fill() for _ in range(a.prefill)))
        spies = []
        tracer = None
        if a.strace:
            target = {"runtime": rt.pid, "driver": os.getpid()}.get(a.strace, server.pid)
            cmd = ["strace", "-c", "-f", "-p", str(target), "-o", str(out / f"{a.mode}-strace.txt")]
            tracer = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
            await asyncio.sleep(1.0)
        elif not a.no_spy:
            for who, pid in (("runtime", rt.pid), ("driver", os.getpid())):
                if who not in a.spy.split(","):
                    continue
                for fmt, ext in (("raw", "txt"), ("flamegraph", "svg")):
                    spies.append(
                        (who, ext, spy(pid, out / f"{a.mode}-{who}.{ext}", fmt, a.seconds, a.rate, a.native))
                    )
            await asyncio.sleep(1.0)  # let py-spy attach
        procs = {"runtime": rt.pid, "nats-server": server.pid, "driver": os.getpid()}
        before = {k: cpu_s(p) for k, p in procs.items() if p}
        t_start = time.perf_counter()
        summary, done = await workload(client, a.mode, a.seconds, a.concurrency)
        wall = time.perf_counter() - t_start
        after = {k: cpu_s(p) for k, p in procs.items() if p}
        cpu = [
            "",
            "| process | CPU (cores busy) | user ms / workflow | system ms / workflow |",
            "|---|---:|---:|---:|",
        ]
        for k in before:
            u, s_ = (after[k][0] - before[k][0]), (after[k][1] - before[k][1])
            cpu.append(
                f"| {k} | {(u + s_) / wall:.2f} | {u * 1000 / max(1, done):.3f} | {s_ * 1000 / max(1, done):.3f} |"
            )
        summary += "\n" + "\n".join(cpu)
        for _, _, p in spies:
            await asyncio.to_thread(p.wait, 60)
        lines = [f"# py-spy profile: {a.mode}", "", summary, ""]
        trace_done = a.trace
        if tracer is not None:
            tracer.send_signal(2)
            await asyncio.to_thread(tracer.wait, 30)
            lines += [
                f"## {a.strace} syscalls (strace -c -f)",
                "",
                "```",
                (out / f"{a.mode}-strace.txt").read_text(),
                "```",
            ]
        for who in ("runtime", "driver"):
            raw = out / f"{a.mode}-{who}.txt"
            if raw.exists():
                lines += [f"## {who} process", "", *fold(raw, a.seconds, a.rate), ""]
        text = "\n".join(lines)
        await client.close()
    finally:
        rt.terminate()
        rt.wait(30)
        server.stop()
    try:
        if trace_done and trace_file.exists():
            import perdure_trace

            text += "\n\n## per-hop timing\n\n" + "\n".join(
                perdure_trace.breakdown(trace_file, DRIVER_STAMPS)
            )
        (out / f"{a.mode}-summary.md").write_text(text)
        print(text)
    finally:
        if not os.environ.get("KEEP"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
