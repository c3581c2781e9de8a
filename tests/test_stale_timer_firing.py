"""A timer's firing that reaches an execution actor whose state is behind history (another
holder of the partition appended the step that started the timer) must not be dropped as
"not applicable": the actor reloads and applies it. Seen in the chaos test after a NATS
restart (seeds 20, 22): a runtime whose lease had lapsed kept its actors a few seconds and
appended ``TimerStarted``; the firing went to the new holder's cached actor, which declined
it, acked it and purged the timer's key, so the execution stayed RUNNING for ever."""

from __future__ import annotations

import time

import msgspec

from perdure import Client, Settings, Worker, sleep, workflow
from perdure.actors.history_log import HistoryLog
from perdure.runtime import codec
from perdure.runtime.events import HistoryStep, TimerFired, TimerStarted
from perdure.runtime.messages import TimerExpired

from support import watch_history


@workflow
async def two_sleeps() -> str:
    await sleep(20)  # t.1: due well within the actor cache's horizon, so the actor stays cached
    await sleep(3600)  # t.2: started by "another holder" below, fired by hand
    return "woke"


async def test_a_firing_for_a_timer_started_elsewhere_is_applied(settings: Settings, client: Client) -> None:
    execution_id = "stale-timer"
    async with Worker([two_sleeps], settings=settings), watch_history(client) as history:
        handle = await client.start(two_sleeps, id=execution_id)
        await history.wait_for(
            lambda h: any(isinstance(e, TimerStarted) for e in h.events(execution_id)), timeout=10
        )
        # Another holder of the partition (a runtime whose lease had lapsed) takes t.1's
        # firing in and starts t.2; the worker's cached actor does not see this step.
        other = HistoryLog(client.conn, client.names, execution_id)
        assert await other.load() is not None
        now = time.time()
        await other.append(
            HistoryStep(
                time=now,
                inputs=[TimerFired(timer="t.1")],
                decisions=[TimerStarted(timer="t.2", fire_at=now + 3600)],
                runtime="other",
            )
        )
        # t.2's firing reaches the cached actor (as the other holder's timer would send it).
        await client.conn.publish(
            client.names.inbox(execution_id),
            codec.encode(TimerExpired(run=1, timer="t.2")),
            msg_id=f"{execution_id}:1:timer:t.2",
        )
        assert await handle.result(timeout=10) == "woke"
        fired = [e for e in history.events(execution_id) if isinstance(e, TimerFired)]
        assert [e.timer for e in fired] == ["t.1", "t.2"], msgspec.json.encode(fired)
