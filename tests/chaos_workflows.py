"""The chaos test's workload (issue 10), importable by runtime processes (``perdure worker chaos_workflows``).

``order`` calls three activities, sleeps on a durable timer, then waits for an async
completion: ``confirm`` hands its token out and returns ``make_async()``; a separate process
that knows nothing of Perdure (``COMPLETER``, nats-py and JSON only) finds the token and
finishes the activity with a plain NATS request to ``<ns>.api.complete``, as a partner's
service answering a callback would.

Every activity run appends one JSON line to the side-effect log named by ``PERDURE_CHAOS_LOG``
(execution, activity seq and name, attempt, pid, wall-clock time, and for ``confirm`` its
token and value): the test compares those runs with the times history recorded each
activity's outcome. The log is also where the completer reads the tokens from: a durable
place outside NATS, so a token handed out survives a NATS restart and a runtime crash.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from perdure import ActivityContext, RetryPolicy, activity, make_async, sleep, workflow

LOG_ENV = "PERDURE_CHAOS_LOG"
TIMER = 0.5  # seconds of durable sleep in each workflow
WORK = 0.25  # seconds each plain activity "works": most of a workflow's life is in attempts, so kills land mid-run

# A timeout on every attempt: a crash is recovered by the attempt's timeout at worst
# (issue 10 item 9 is about doing better), and retries are unlimited.
RETRY = RetryPolicy(initial_interval=0.2, maximum_attempts=0)
STEP = {"timeout": 3.0, "retry": RETRY}
# The async completion needs the completer's round trip, which a NATS restart delays.
ASYNC_STEP = {"timeout": 15.0, "retry": RETRY}


def record_run(ctx: ActivityContext, **extra: Any) -> None:
    """Append this run to the side-effect log: one ``write`` of one line with ``O_APPEND``,
    so lines from several processes never interleave and a SIGKILL leaves no half line."""
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    entry = {
        "e": ctx.execution_id,
        "seq": ctx.activity_id,
        "name": ctx.activity,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
        "t": time.time(),
        **extra,
    }
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


@activity(**STEP)
async def reserve(n: int, ctx: ActivityContext) -> int:
    record_run(ctx)
    await asyncio.sleep(WORK)
    return n + 1


@activity(**STEP)
async def charge(amount: int, ctx: ActivityContext) -> int:
    record_run(ctx)
    await asyncio.sleep(WORK)
    return amount * 2


@activity(**STEP)
async def ship(parcel: int, ctx: ActivityContext) -> int:
    record_run(ctx)
    await asyncio.sleep(WORK)
    return parcel + 7


@activity(**ASYNC_STEP)
async def confirm(value: int, ctx: ActivityContext) -> int:
    """Hands the token out (the log) and leaves; the completer answers ``value * 3``."""
    record_run(ctx, token=ctx.token, value=value)
    return make_async()


@workflow
async def order(n: int) -> list[int]:
    reserved = await reserve(n)
    charged = await charge(reserved)
    await sleep(TIMER)
    shipped = await ship(charged)
    confirmed = await confirm(shipped)
    return [reserved, charged, shipped, confirmed]


def order_expected(n: int) -> list[int]:
    reserved = n + 1
    charged = reserved * 2
    shipped = charged + 7
    return [reserved, charged, shipped, shipped * 3]


# The external completer: nats-py and JSON only. Arguments: URL, the complete subject, the
# side-effect log to tail for tokens, a file to append each token's final answer to.
# Answers that a transient outage explains (no responder, a timeout, the server restarting)
# are retried, as any client of a remote service would; the final code is recorded.
COMPLETER = r"""
import asyncio, json, sys
import nats

RETRYABLE = {"unavailable", "config.invalid"}

async def main():
    url, subject, log_path, out_path = sys.argv[1:5]
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    out = open(out_path, "a", buffering=1)
    seen, tasks = set(), set()

    async def complete(entry):
        body = json.dumps({"token": entry["token"], "result": entry["value"] * 3}).encode()
        codes = []  # the answer to each try
        while len(codes) < 120:
            try:
                reply = json.loads((await nc.request(subject, body, timeout=5)).data)
            except Exception as exc:
                codes.append(type(exc).__name__)
            else:
                codes.append("ok" if reply.get("ok") else reply["error"]["code"])
                if codes[-1] not in RETRYABLE:
                    break
            await asyncio.sleep(0.25)
        line = {k: entry[k] for k in ("e", "seq", "attempt", "token")}
        out.write(json.dumps({**line, "code": codes[-1], "codes": codes}) + "\n")

    offset, pending = 0, b""
    while True:
        with open(log_path, "ab+") as f:
            f.seek(offset)
            chunk = f.read()
        offset += len(chunk)
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            entry = json.loads(line)
            if "token" in entry and entry["token"] not in seen:
                seen.add(entry["token"])
                task = asyncio.ensure_future(complete(entry))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        await asyncio.sleep(0.02)

asyncio.run(main())
"""
