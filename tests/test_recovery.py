"""Recovery at lease speed (issue 10 item 9): an attempt started by a runtime that is
SIGKILLed is retried within about ``lease_ttl`` of the crash, whatever its timeout."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from timeout_workflows import Stuck, recovering

from perdure import Client, EmbeddedServer
from perdure.actors.worker import ACTIVITY_GRACE

from support import RuntimeProcess

LEASE_TTL = 1.0


@pytest.mark.parametrize("eager", ["0", "1"])
async def test_a_started_attempt_of_a_sigkilled_runtime_is_retried_within_the_lease_ttl(
    nats_server: EmbeddedServer, namespace: str, client: Client, tmp_path: Path, eager: str
) -> None:
    """Two runtimes (lease_ttl 1 s) host the workflow and its activity (timeout 600 s, no
    heartbeat). The runtime running the first attempt is SIGKILLed mid-attempt; the survivor
    runs the activity again, and the time from the kill to that run is measured."""
    runtimes = [
        RuntimeProcess(
            nats_server.url,
            namespace,
            name,
            targets=("timeout_workflows",),
            extra_args=("--lease-ttl", str(LEASE_TTL)),
            env={"PERDURE_EAGER_ACTIVITIES": eager, "PERDURE_NAME": name},
        )
        for name in ("left", "right")
    ]
    await asyncio.gather(*(r.astart() for r in runtimes))
    try:
        handle = await client.start(recovering, Stuck(flag=str(tmp_path / "flag")), id="stuck")
        waits = {asyncio.ensure_future(r.await_line("STUCK_STARTED", timeout=20)): r for r in runtimes}
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        running = waits[next(iter(done))]
        running.kill()
        killed_at = time.time()
        rerun_at = await handle.result(timeout=20)
    finally:
        for r in runtimes:
            r.kill()
    latency = rerun_at - killed_at
    print(f"eager={eager}: attempt of a SIGKILLed runtime run again {latency:.3f}s after the kill")
    assert 0 < latency <= LEASE_TTL + 2.0, latency


async def test_an_attempt_cut_short_by_sigterm_is_retried_within_the_lease_ttl(
    nats_server: EmbeddedServer, namespace: str, client: Client, tmp_path: Path
) -> None:
    """A runtime stopped with SIGTERM gives a running attempt 2 s to finish, then cancels
    it: the attempt (timeout 600 s) is run again elsewhere within about lease_ttl of that."""
    runtimes = [
        RuntimeProcess(
            nats_server.url,
            namespace,
            name,
            targets=("timeout_workflows",),
            extra_args=("--lease-ttl", str(LEASE_TTL)),
            env={"PERDURE_EAGER_ACTIVITIES": "0", "PERDURE_NAME": name},
        )
        for name in ("left", "right")
    ]
    await asyncio.gather(*(r.astart() for r in runtimes))
    try:
        handle = await client.start(recovering, Stuck(flag=str(tmp_path / "flag")), id="stuck")
        waits = {asyncio.ensure_future(r.await_line("STUCK_STARTED", timeout=20)): r for r in runtimes}
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        stopping = waits[next(iter(done))]
        signalled_at = time.time()
        await stopping.aterminate()
        rerun_at = await handle.result(timeout=20)
    finally:
        for r in runtimes:
            r.kill()
    # The grace starts once the runtime has handed its partitions over (slower under load):
    # measured from there, what is left is the grace, the liveness TTL and the retry.
    grace_at = _logged_at(stopping.wait_line("runtime.finishing_activities", timeout=1))
    latency = rerun_at - grace_at
    print(
        f"attempt of a SIGTERMed runtime run again {rerun_at - signalled_at:.3f}s after the signal, "
        f"{latency:.3f}s after its grace began"
    )
    assert 0 < latency <= ACTIVITY_GRACE + LEASE_TTL + 2.0, latency


def _logged_at(line: str) -> float:
    """The time at the head of a runtime's log line (``2026-11-30T07:04:24.095299Z [info ...``)."""
    stamp = line.split(" ", 1)[0].rstrip("Z")
    return datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()
