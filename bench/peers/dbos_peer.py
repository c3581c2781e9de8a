"""DBOS Transact peer: the `dbos` library with a SQLite system database.

Runs in bench/.peers/dbos (its own venv). DBOS is a library, not a server: workflows
execute in this process and checkpoint every step to SQLite, so "the runtime" is just
this process.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from importlib.metadata import version
from pathlib import Path

from dbos import DBOS, SetWorkflowID

import common

# DBOS on SQLite learns of DBOS.send messages by polling (Postgres would use
# LISTEN/NOTIFY). The default is 1 s; 10 ms is what a latency-minded user would pick.
NOTIFICATION_POLL_S = 0.01
REPLAY_STEPS = 1000

READY: asyncio.Queue[str] = asyncio.Queue()  # workflows waiting in recv (same process)
ASLEEP: set[str] = set()  # ballast workflows that reached their sleep


@DBOS.step()
async def noop(i: int) -> int:
    return i


@DBOS.workflow()
async def chain(k: int) -> int:
    total = 0
    for i in range(k):
        total += await noop(i)
    return total


@DBOS.workflow()
async def sleeper(seconds: float) -> float:
    # Plain wall time is safe here: DBOS re-runs a workflow function only on recovery,
    # which this benchmark never triggers.
    t0 = time.time()
    await DBOS.sleep_async(seconds)  # durable: the wake-up time is checkpointed first
    return (time.time() - t0 - seconds) * 1000


@DBOS.workflow()
async def ballast(seconds: float) -> None:
    ASLEEP.add(DBOS.workflow_id or "")
    await DBOS.sleep_async(seconds)


@DBOS.workflow()
async def external() -> int:
    """Waits for a message sent by workflow id: DBOS's way to complete work from outside."""
    READY.put_nowait(DBOS.workflow_id or "")
    return await DBOS.recv_async("done", timeout_seconds=60)


class DbosDriver(common.Driver):
    name = "dbos"

    async def setup(self, workdir: Path) -> None:
        DBOS(
            config={
                "name": "perdure-bench",
                "system_database_url": f"sqlite:///{workdir / 'dbos.sqlite'}",
                "notification_listener_polling_interval_sec": NOTIFICATION_POLL_S,
                "log_level": "WARNING",
            }
        )
        DBOS.launch()
        self.launched = True

    async def close(self) -> None:
        if getattr(self, "launched", False):
            # destroy() cancels the sleeping ballast and logs a warning for each one.
            logging.getLogger("dbos").setLevel(logging.ERROR)
            DBOS.destroy(workflow_completion_timeout_sec=0)

    def versions(self) -> dict[str, str]:
        return {
            "dbos": version("dbos"),
            "sqlalchemy": version("sqlalchemy"),
            "sqlite": sqlite3.sqlite_version,
        }

    def config(self) -> dict[str, str]:
        return {"db": "SQLite file", "notification_listener_polling_interval_sec": str(NOTIFICATION_POLL_S)}

    async def wf1(self) -> None:
        await chain(1)

    async def wf10(self) -> None:
        await chain(10)

    async def many_wf1(self, n: int) -> None:
        handles = [await DBOS.start_workflow_async(chain, 1) for _ in range(n)]
        await asyncio.gather(*(h.get_result() for h in handles))

    async def sleep_probe(self) -> float:
        return await sleeper(1.0)

    async def start_ballast(self, m: int) -> None:
        for _ in range(m):
            await DBOS.start_workflow_async(ballast, float(common.BALLAST_SLEEP_S))
        await common.wait_until(lambda: len(ASLEEP) >= m, 600, "DBOS ballast")

    async def async_completion(self) -> float:
        wfid = f"x-{uuid.uuid4()}"
        with SetWorkflowID(wfid):
            handle = await DBOS.start_workflow_async(external)
        await READY.get()
        t0 = time.perf_counter()
        await DBOS.send_async(wfid, 7, "done")
        await handle.get_result()
        return (time.perf_counter() - t0) * 1000

    async def heartbeats(self, seconds: float) -> int:
        raise common.NotApplicable(
            "DBOS steps have no heartbeats: they run in-process, checkpointed on return"
        )

    async def replay(self) -> dict:
        """fork_workflow re-runs a finished 1,000-step workflow from its last step: every
        earlier step's output is read back from the database instead of executed, which
        is DBOS's replay (recovery works the same way)."""
        if not hasattr(self, "replay_id"):
            self.replay_id = f"replay-{uuid.uuid4()}"
            with SetWorkflowID(self.replay_id):
                await chain(REPLAY_STEPS)
        t0 = time.perf_counter()
        handle = await DBOS.fork_workflow_async(self.replay_id, REPLAY_STEPS)
        await handle.get_result()
        ms = (time.perf_counter() - t0) * 1000
        return {"events": REPLAY_STEPS, "ms": round(ms, 2)}


if __name__ == "__main__":
    common.main(DbosDriver())
