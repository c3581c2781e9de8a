"""A work item naming an execution id that is not valid (issue 10, item 2, the activity
actor's part): refused before the activity runs, terminated, never redelivered."""

from __future__ import annotations

import asyncio
import json

import msgspec
from payload_workflows import recorded, records, runs

from perdure import Client, Settings, Worker
from perdure.runtime import codec
from perdure.runtime.messages import ActivityTask


async def work_consumer_state(client: Client, activity: str) -> tuple[int, int, int]:
    """(delivered stream sequence, pending, waiting for an ack) of the activity's consumer."""
    info = await client.conn.consumer_info(client.names.work_stream, client.names.work_consumer(activity))
    return info.delivered.stream_seq, info.num_pending, info.num_ack_pending


async def test_a_work_item_with_an_invalid_execution_id_is_terminated_unrun(
    settings: Settings, client: Client
) -> None:
    runs.clear()  # shared by every test that hosts ``recorded`` in this process
    async with Worker([records, recorded], settings=settings):
        handle = await client.start(records, "before", id="healthy-before")
        assert await handle.result(timeout=30) == "before"
        stream, consumer = client.names.work_stream, client.names.work_consumer("recorded")
        sub, terminated = await client.conn.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{stream}.{consumer}"
        )
        await client.conn.flush()
        for bad in ("a.b", "x y"):
            task = ActivityTask(
                execution_id=bad,
                workflow="records",
                run=1,
                seq=1,
                attempt=1,
                name="recorded",
                input=msgspec.Raw(b'"poison"'),
                nonce="n",
                token="t",
            )
            await client.conn.publish(client.names.work("recorded"), codec.encode(task))
        # The server announces each terminated item (not redelivered after ack_wait, 30 s).
        async with asyncio.timeout(10):
            advisories = [json.loads((await anext(terminated)).data) for _ in range(2)]
        await sub.stop()
        assert [a["stream_seq"] for a in advisories] == sorted(a["stream_seq"] for a in advisories)
        assert (await work_consumer_state(client, "recorded"))[1:] == (0, 0)
        handle = await client.start(records, "after", id="healthy-after")
        assert await handle.result(timeout=30) == "after"
    assert runs == ["healthy-before:before", "healthy-after:after"], runs
