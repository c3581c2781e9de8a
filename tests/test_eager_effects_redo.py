"""The last step of a workflow whose inputs are only eager outcomes (no inbox message), and
whose effects fail (the executions index refusing writes, as during its leader election).

Before: nothing brought the step back to redo its effects. Its outcomes were handed to the
actor again, recognised as closed and dropped, and the inbox message that scheduled them was
acked, so the index kept ``RUNNING`` although history had ``WorkflowCompleted``, and
``handle.result()`` never returned (40 executions in one 3-node cluster failover run). Now that
message comes back (actors/step_acks.py) and its redo covers the eager step's effects.
"""

from __future__ import annotations

import asyncio
import copy

import structlog

from perdure import Client, Settings, Worker, activity, workflow
from perdure.runtime.events import WorkflowCompleted
from perdure.runtime.nats_client import nats_core

from support import watch_history


@activity(timeout=30)
async def pause(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "paused"


@workflow
async def pauses_once(seconds: float) -> str:
    return await pause(seconds)


async def test_an_eager_last_step_whose_index_put_failed_still_completes(
    settings: Settings, client: Client
) -> None:
    with structlog.testing.capture_logs() as logs:
        async with Worker([pauses_once, pause], settings=settings), watch_history(client) as watch:
            handle = await client.start(pauses_once, 1.0, id="eager-effects")
            await watch.wait_for(lambda w: bool(w.steps.get(handle.id)), timeout=10)
            js = nats_core(client.conn).jetstream()
            stream = f"KV_{client.names.executions_bucket}"
            config = (await js.stream_info(stream)).config
            refusing = copy.deepcopy(config)
            refusing.subjects = [f"{client.names.namespace}.index-refused.>"]
            await js.update_stream(refusing)  # index puts fail, as during an election
            try:
                await watch.wait_for(
                    lambda w: any(isinstance(e, WorkflowCompleted) for e in w.events(handle.id)), timeout=10
                )
                for _ in range(100):  # the step's effects have failed (logged; no other event)
                    if any(entry["event"] == "execution.effects_failed" for entry in logs):
                        break
                    await asyncio.sleep(0.05)
            finally:
                await js.update_stream(config)
            assert await handle.result(timeout=10) == "paused"
