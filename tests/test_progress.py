"""Activity progress seen by the workflow: ``h.progress()`` yields every checkpoint in order,
recorded in history, and replays identically after a runtime restart."""

from __future__ import annotations

import json

from perdure import Client, EmbeddedServer
from perdure.runtime.events import ActivityProgressed, TimerFired, WorkflowCompleted

from support import RuntimeProcess, watch_history


async def test_progress_is_seen_in_order_and_replays_after_a_restart(
    nats_server: EmbeddedServer, namespace: str, client: Client
) -> None:
    runtime = await RuntimeProcess(
        nats_server.url, namespace, "watcher", targets=("progress_workflows",)
    ).astart()
    try:
        async with watch_history(client) as watch:
            handle = await client.start("watch_steps", 6, id="progress")
            # Kill the runtime once part of the progress is recorded: a new one replays the
            # workflow (which saw those checkpoints), and the retried activity resumes from
            # its checkpoint and reports the rest.
            await watch.wait_for(
                lambda w: sum(isinstance(e, ActivityProgressed) for e in w.events("progress")) >= 2
            )
            runtime.kill()
            await runtime.astart()
            result = await handle.result(timeout=60)
    finally:
        runtime.kill()
    assert result == {"seen": [1, 2, 3, 4, 5, 6], "result": "stepped 6", "after_sleep": True}
    events = await handle.history()
    recorded = [json.loads(bytes(e.details)) for e in events if isinstance(e, ActivityProgressed)]
    assert recorded == [1, 2, 3, 4, 5, 6]
    # The crash shows in history as the heartbeat timer and the retry; the workflow's own
    # sleep fired once.
    fired = [e.timer for e in events if isinstance(e, TimerFired)]
    assert fired == ["a.1.1.hb", "a.1.2.retry", "t.1"], fired
    assert isinstance(events[-1], WorkflowCompleted)
