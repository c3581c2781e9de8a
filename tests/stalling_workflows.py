"""A workflow whose second step holds its workflow thread for seconds (run with a step
budget above that), for tests/test_failover.py: the partition holding it takes that long to
settle when it is released."""

from __future__ import annotations

import time

from perdure import sleep, workflow


@workflow
async def stalls(seconds: float) -> str:
    await sleep(0.1)  # the first step is quick: its TimerStarted tells the test it runs
    time.sleep(seconds)  # noqa: ASYNC251  # the next step holds its workflow thread, not the loop
    return "done"
