"""Restate peer: restate-server from the npm package, the `restate-sdk` Python SDK served by
hypercorn, driven through the HTTP ingress with httpx.

Runs in bench/.peers/restate (its own venv); the server binary lives in
bench/.peers/restate-server/node_modules. The hypercorn service runs inside this driver
process, on its event loop, like Temporal's worker and DBOS's executor do for theirs.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path

import httpx
import restate
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

import common

ROOT = Path(__file__).resolve().parent.parent / ".peers" / "restate-server"
SERVER_BIN = ROOT / "node_modules/@restatedev/restate-server-linux-x64/bin/restate-server"
REPLAY_STEPS = 998  # + the hand-off step, the awakeable and the input: ~1,000 journal entries
SUSPEND_AFTER = timedelta(seconds=1)  # handler inactivity timeout where we want suspension

# Awakeable ids handed from handlers to the driver (same process, same event loop).
AWAKEABLES: asyncio.Queue[str] = asyncio.Queue()
ASLEEP: set[str] = set()  # ballast invocations that reached their sleep

svc = restate.Service("bench")


def noop(i: int) -> int:
    return i


@svc.handler()
async def chain(ctx: restate.Context, k: int) -> int:
    """k sequential durable steps (ctx.run is Restate's activity)."""
    total = 0
    for i in range(k):
        total += await ctx.run_typed(f"step-{i}", noop, restate.RunOptions(), i)
    return total


@svc.handler()
async def sleeper(ctx: restate.Context, seconds: float) -> float:
    t0 = await ctx.time()  # journaled, so a replay after suspension sees the same start
    await ctx.sleep(timedelta(seconds=seconds))
    return (time.time() - t0 - seconds) * 1000


@svc.handler(inactivity_timeout=SUSPEND_AFTER)
async def ballast(ctx: restate.Context, seconds: float) -> None:
    """A long sleep that suspends (frees the service) after a second, as a production
    deployment would; the default keeps the HTTP/2 stream open for a minute."""
    ASLEEP.add(ctx.request().id)
    await ctx.sleep(timedelta(seconds=seconds))


def hand_off(name: str) -> None:
    AWAKEABLES.put_nowait(name)


@svc.handler()
async def external(ctx: restate.Context) -> int:
    """An awakeable resolved from outside: Restate's async completion."""
    name, promise = ctx.awakeable(type_hint=int)
    await ctx.run_typed("hand-off", hand_off, restate.RunOptions(), name)
    return await promise


@svc.handler(inactivity_timeout=SUSPEND_AFTER)
async def journal(ctx: restate.Context, k: int) -> int:
    """k steps, then an awakeable; once suspended, resolving it makes the server replay
    the whole journal into a fresh handler run: a cold replay."""
    total = 0
    for i in range(k):
        total += await ctx.run_typed(f"step-{i}", noop, restate.RunOptions(), i)
    name, promise = ctx.awakeable(type_hint=int)
    await ctx.run_typed("hand-off", hand_off, restate.RunOptions(), name)
    return total + await promise


def restate_toml(workdir: Path, ports: dict[str, int]) -> str:
    return f"""
base-dir = "{workdir / "restate-data"}"
bind-address = "127.0.0.1:{ports["node"]}"
advertised-address = "http://127.0.0.1:{ports["node"]}"
disable-telemetry = true
log-filter = "warn"

[admin]
bind-address = "127.0.0.1:{ports["admin"]}"
disable-web-ui = true

[ingress]
bind-address = "127.0.0.1:{ports["ingress"]}"
"""


class RestateDriver(common.Driver):
    name = "restate"

    async def setup(self, workdir: Path) -> None:
        ports = {k: common.free_port() for k in ("node", "admin", "ingress", "service")}
        conf = workdir / "restate.toml"
        conf.write_text(restate_toml(workdir, ports))
        # DO_NOT_TRACK also stops the server's check for a newer release (no network here).
        env = {**os.environ, "DO_NOT_TRACK": "1"}
        cmd = [str(SERVER_BIN), "--no-logo", "-c", str(conf)]
        self.servers.start(cmd, workdir / "restate-server.log", env=env)
        admin = f"http://127.0.0.1:{ports['admin']}"
        await common.wait_until(lambda: common.http_ok(f"{admin}/health"), 60, "restate-server admin")
        self.service_task = asyncio.create_task(serve_app(ports["service"]))
        await common.wait_until(lambda: common.port_open(ports["service"]), 30, "hypercorn")
        # One connection per concurrent call: ingress calls block until the handler ends.
        limits = httpx.Limits(max_connections=12_000, max_keepalive_connections=12_000)
        self.http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{ports['ingress']}", limits=limits, timeout=None
        )
        await register(self.http, admin, ports["service"])
        await self._until_routable()

    async def _until_routable(self) -> None:
        """Registration returns before every ingress partition knows the service."""
        for _ in range(300):
            r = await self.http.post("/bench/chain", json=0)
            if r.status_code == 200:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"ingress never routed: {r.status_code} {r.text}")

    async def close(self) -> None:
        if hasattr(self, "http"):
            await self.http.aclose()
        if hasattr(self, "service_task"):
            self.service_task.cancel()
            await asyncio.gather(self.service_task, return_exceptions=True)
        self.servers.stop()

    def versions(self) -> dict[str, str]:
        srv = subprocess.run([str(SERVER_BIN), "--version"], capture_output=True, text=True).stdout.strip()
        return {"restate-sdk": version("restate-sdk"), "hypercorn": version("hypercorn"), "server": srv}

    def config(self) -> dict[str, str]:
        return {
            "server": "single node, defaults (24 partitions, RocksDB)",
            "service": "hypercorn h2c, in the driver",
        }

    async def _call(self, handler: str, body) -> object:
        r = await self.http.post(f"/bench/{handler}", json=body)
        r.raise_for_status()
        return r.json()

    async def wf1(self) -> None:
        await self._call("chain", 1)

    async def wf10(self) -> None:
        await self._call("chain", 10)

    async def sleep_probe(self) -> float:
        return float(await self._call("sleeper", 1.0))

    async def start_ballast(self, m: int) -> None:
        gate = asyncio.Semaphore(200)

        async def send() -> None:
            # /send enqueues the invocation and returns at once, so nothing stays open.
            async with gate:
                (
                    await self.http.post("/bench/ballast/send", json=float(common.BALLAST_SLEEP_S))
                ).raise_for_status()

        await asyncio.gather(*(send() for _ in range(m)))
        await common.wait_until(lambda: len(ASLEEP) >= m, 600, "Restate ballast")
        await asyncio.sleep(SUSPEND_AFTER.total_seconds() + 0.5)  # let them suspend

    async def _resolve_after(self, call: asyncio.Task, settle: float = 0.0) -> float:
        name = await AWAKEABLES.get()
        if settle:
            await asyncio.sleep(settle)
        t0 = time.perf_counter()
        (await self.http.post(f"/restate/awakeables/{name}/resolve", json=7)).raise_for_status()
        await call
        return (time.perf_counter() - t0) * 1000

    async def async_completion(self) -> float:
        return await self._resolve_after(asyncio.create_task(self._call("external", None)))

    async def heartbeats(self, seconds: float) -> int:
        raise common.NotApplicable(
            "Restate has no activity heartbeats: a ctx.run block lives as long as the invocation's stream"
        )

    async def replay(self) -> dict:
        """Resolve the awakeable of a suspended invocation with a ~1,000-entry journal: the
        server streams the journal back and the SDK replays it before the handler resumes.
        baseline_ms is the same for an invocation with an empty journal."""
        settle = SUSPEND_AFTER.total_seconds() + 1.0
        ms = await self._resolve_after(asyncio.create_task(self._call("journal", REPLAY_STEPS)), settle)
        base = await self._resolve_after(asyncio.create_task(self._call("journal", 0)), settle)
        return {"events": REPLAY_STEPS + 3, "ms": round(ms, 2), "baseline_ms": round(base, 2)}


async def serve_app(port: int) -> None:
    cfg = HypercornConfig()
    cfg.bind = [f"127.0.0.1:{port}"]
    cfg.h2_max_concurrent_streams = 20_000  # the default 100 would cap concurrent invocations
    cfg.keep_alive_timeout = 600
    cfg.loglevel = "WARNING"
    cfg.accesslog = None
    await serve(restate.app(services=[svc]), cfg)


async def register(http: httpx.AsyncClient, admin: str, service_port: int) -> None:
    body = {"uri": f"http://127.0.0.1:{service_port}", "force": True}
    r = await http.post(f"{admin}/deployments", json=body)
    if r.status_code >= 300:
        raise RuntimeError(f"registration failed: {r.status_code} {r.text}")


if __name__ == "__main__":
    common.main(RestateDriver())
