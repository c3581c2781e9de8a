"""A long heartbeating job that is interrupted and resumes from its checkpoint on retry.

    python examples/resume_from_checkpoint.py

The activity transcodes a video chunk by chunk. After each chunk it calls
``ctx.heartbeat(chunk)``: that tells the runtime it is alive (the heartbeat timeout is
1 s) and records the chunk as its checkpoint. Heartbeats are throttled (at most one to the
server per 0.8 s here) and never grow the history. On the first attempt the storage node
drops the connection half-way; the retry policy starts attempt 2 after a durable back-off
timer, and attempt 2 finds the last checkpoint in ``ctx.checkpoint`` and carries on from
there instead of starting over.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import timedelta

import msgspec

from perdure import (
    ActivityContext,
    Client,
    EmbeddedServer,
    RetryPolicy,
    Settings,
    Worker,
    activity,
    workflow,
)
from perdure.runtime.logs import configure

T0 = time.monotonic()
CHUNKS = 30
BREAKS_AT = 12  # the first attempt's connection drops after this many chunks


def say(what: str) -> None:
    print(f"[{time.monotonic() - T0:6.3f}s] {what}", flush=True)


class Transcoded(msgspec.Struct):
    chunks: int
    attempts: int
    resumed_from: int | None


@activity(
    timeout=timedelta(minutes=10),
    heartbeat=timedelta(seconds=1),
    retry=RetryPolicy(initial_interval=0.5, maximum_attempts=3),
)
async def transcode(chunks: int, ctx: ActivityContext) -> Transcoded:
    start = ctx.checkpoint or 0  # the last heartbeat's details of an earlier attempt
    say(f"activity attempt {ctx.attempt}: checkpoint {ctx.checkpoint}, starting at chunk {start}")
    for chunk in range(start, chunks):
        await asyncio.sleep(0.05)  # transcode one chunk
        if ctx.attempt == 1 and chunk == BREAKS_AT:
            say(f"activity attempt {ctx.attempt}: storage connection lost at chunk {chunk}")
            raise ConnectionResetError("storage node went away")
        await ctx.heartbeat(chunk + 1)  # chunks done so far: where a retry resumes
    say(f"activity attempt {ctx.attempt}: all {chunks} chunks done")
    return Transcoded(chunks=chunks, attempts=ctx.attempt, resumed_from=ctx.checkpoint)


@workflow
async def publish_video(chunks: int) -> Transcoded:
    return await transcode(chunks)


async def main() -> None:
    configure("ERROR")
    with tempfile.TemporaryDirectory() as store:
        server = EmbeddedServer(store_dir=store)
        say(f"embedded NATS with JetStream at {server.start()}")
        settings = Settings(url=server.url, namespace="resume", name="resume-runtime")
        try:
            async with Worker([publish_video, transcode], settings=settings):
                client = await Client.connect(server.url, namespace="resume")
                handle = await client.start(publish_video, CHUNKS, id="video-42")
                result = await handle.result(timeout=60)
                say(
                    f"workflow result: {result.chunks} chunks in {result.attempts} attempts, "
                    f"attempt {result.attempts} resumed from chunk {result.resumed_from}"
                )
                events = await handle.history()
                say(f"history: {len(events)} events, whatever the number of heartbeats:")
                for event in events:
                    fields = msgspec.structs.asdict(event)
                    shown = {k: fields[k] for k in ("seq", "attempt", "timer", "outcome") if k in fields}
                    if "error" in fields:
                        shown["error"] = f"{fields['error'].type}: {fields['error'].message}"
                    print(f"    {type(event).__name__:<20} {shown or ''}")
                await client.close()
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
