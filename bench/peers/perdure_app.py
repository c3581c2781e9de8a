"""The workflows and activities of the Perdure benchmark.

Hosted by a separate runtime process (`python -m perdure.runtime.daemon worker
bench/peers/perdure_app.py ...`, started by perdure_peer.py) and imported by the driver for
the definitions it starts. The counterparts of temporal_peer.py's Chain / Sleeper / External.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import timedelta

from perdure import ActivityContext, activity, make_async, sleep, workflow

# Temporal's peer needs a start_to_close timeout; Perdure's idiomatic activity has one too
# (it costs a timeout timer put on start and a cancel on close, both pipelined effects).
ACT_TIMEOUT = timedelta(seconds=60)
TOKENS_SUBJECT = "bench.tokens"  # async-completion tokens, runtime -> driver (core NATS)

# A heartbeat timeout this small turns the 0.8 x timeout throttle off, so that every
# ctx.heartbeat() reaches the server (the record's TTL is still rounded up to 1 s, so the
# activity never times out while it beats).
TINY_HEARTBEAT = 1e-6


@activity(timeout=ACT_TIMEOUT)
async def noop(i: int) -> int:
    return i


@workflow
async def chain(k: int) -> int:
    """k sequential activities: 1 for wf1, 10 for wf10."""
    total = 0
    for i in range(k):
        total += await noop(i)
    return total


@workflow
async def sleeper(seconds: float) -> float:
    """One durable timer; its lateness in ms as the workflow code sees it (workflow.time()
    is the time of the step that resumed the code)."""
    start = workflow.time()
    await sleep(seconds)
    return (workflow.time() - start - seconds) * 1000


@workflow
async def ballast(seconds: float) -> None:
    await sleep(seconds)


class _Nats:
    """The runtime process's own connection to hand tokens to the driver (a stand-in for
    the e-mail with a link of a real async activity)."""

    nc = None
    lock: asyncio.Lock | None = None

    @classmethod
    async def get(cls):
        if cls.nc is None:
            cls.lock = cls.lock or asyncio.Lock()
            async with cls.lock:
                if cls.nc is None:
                    import nats

                    cls.nc = await nats.connect(os.environ["BENCH_NATS_URL"])
        return cls.nc


@activity(timeout=ACT_TIMEOUT)
async def wait_external(ctx: ActivityContext) -> int:
    nc = await _Nats.get()
    await nc.publish(TOKENS_SUBJECT, json.dumps({"id": ctx.execution_id, "token": ctx.token}).encode())
    return make_async()


@workflow
async def external() -> int:
    """An activity completed from outside with its token."""
    return await wait_external()


@activity(timeout=ACT_TIMEOUT, heartbeat=TINY_HEARTBEAT)
async def beat(seconds: float, ctx: ActivityContext) -> int:
    """Heartbeats back-to-back for `seconds`; returns how many it sent."""
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await ctx.heartbeat()
        n += 1
    return n


@workflow
async def beats(seconds: float) -> int:
    return await beat(seconds)


@activity
async def noop_untimed(i: int) -> int:
    return i


@workflow
async def journal(k: int) -> int:
    """k activities, then wait for a signal: sent to a fresh runtime, the signal makes it load
    and replay the whole history before the workflow can carry on (a cold replay).

    Its activities have no timeout, so that it has no timers at all: a fresh runtime re-fires
    the expiry markers of cancelled timers (they live an hour), which would make it load this
    execution on its own before the signal arrives, and the replay would not be cold."""
    total = 0
    for i in range(k):
        total += await noop_untimed(i)
    await workflow.wait_signal("go")
    return total
