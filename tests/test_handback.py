"""SIGTERM hands back work items pulled but not started (issue 10, item 9, last sentence).

Runtime A (``--concurrency 1``) is the only host of an activity when a workflow schedules
several attempts of it; once A runs the first, it gets SIGTERM and runtime B starts. The
items A had taken but not started must reach B at once (nak without delay), not after the
work consumer's ack wait (30 s): all attempts complete a few seconds after the SIGTERM, and
A ran only what it had started.
"""

from __future__ import annotations

import asyncio
import time

from handback_activities import slowish

from perdure import Client, EmbeddedServer, Settings, Worker, workflow
from perdure.actors.activity_actor import ACK_WAIT, _hand_back
from perdure.runtime.nats_admin import ensure_consumer, ensure_stream
from perdure.runtime.nats_client import Connection
from perdure.runtime.nats_consumer import Delivery, PullConsumer

from support import RuntimeProcess

ITEMS = 6
WITHIN = 10.0  # seconds after the SIGTERM: far below the ack wait (30 s)


@workflow
async def fan_out(n: int) -> list[str]:
    return list(await asyncio.gather(*[slowish(i) for i in range(n)]))


async def test_sigterm_hands_unstarted_work_items_to_another_runtime(
    nats_server: EmbeddedServer, namespace: str, settings: Settings, client: Client
) -> None:
    assert WITHIN < ACK_WAIT / 2
    a = RuntimeProcess(
        nats_server.url,
        namespace,
        "hb-a",
        targets=("handback_activities",),
        extra_args=("--concurrency", "1"),
        env={"PERDURE_NAME": "hb-a"},
    )
    b = RuntimeProcess(
        nats_server.url, namespace, "hb-b", targets=("handback_activities",), env={"PERDURE_NAME": "hb-b"}
    )
    await a.astart()
    try:
        async with Worker([fan_out], settings=settings):  # the workflow only: no activity here
            handle = await client.start(fan_out, ITEMS, id="hand-back")
            await a.await_line("handback.attempt_started")
            term_at = time.monotonic()
            exited = asyncio.ensure_future(a.aterminate(timeout=30))
            await b.astart()
            result = await handle.result(timeout=ACK_WAIT + 20)
            took = time.monotonic() - term_at
            assert await exited == 0, a.output()[-3000:]
        ran_on_a = [r for r in result if r.startswith("hb-a:")]
        print(f"\n[handback] all {ITEMS} done {took:.2f} s after SIGTERM; A ran {ran_on_a}")
        assert sorted(int(r.split(":")[1]) for r in result) == list(range(ITEMS))
        assert a.output().count("handback.attempt_started") == len(ran_on_a) == 1, a.output()[-3000:]
        assert took < WITHIN, took
    finally:
        a.kill()
        b.kill()


async def test_a_stopped_consumer_hands_its_queued_items_back_at_once(
    nats_server: EmbeddedServer, namespace: str
) -> None:
    """The primitive under the stop path: items a work consumer received but nobody took
    from its queue are nak'd without delay when it stops, and the next pull (another
    runtime's) gets them at once, delivered a second time, not after the ack wait."""
    conn = await Connection.connect(nats_server.url)
    stream, subject = namespace.upper() + "_HB", f"{namespace}.hb.>"
    try:
        await ensure_stream(conn, name=stream, subjects=[subject], replicas=1, work_queue=True)
        await ensure_consumer(
            conn, stream=stream, name="w", filter_subject=subject, ack_wait=ACK_WAIT, max_ack_pending=100
        )
        first = PullConsumer(conn, stream, "w", credit=5)
        await first.start()
        for i in range(5):
            await conn.publish(f"{namespace}.hb.{i}", str(i).encode())
        taken = await asyncio.wait_for(first.next_batch(limit=1), 5)  # one started...
        for _ in range(500):  # ...four wait in its queue (the server pushes them; no event says so)
            if first._queue.qsize() == 4:
                break
            await asyncio.sleep(0.01)
        assert first._queue.qsize() == 4
        await first.stop()
        await _hand_back(first, "hb")
        second = PullConsumer(conn, stream, "w", credit=5)
        await second.start()
        got: list[Delivery] = []
        async with asyncio.timeout(ACK_WAIT / 3):
            while len(got) < 4:
                got.extend(await second.next_batch())
        await second.stop()
        assert sorted(d.data for d in got) == [b"1", b"2", b"3", b"4"]
        assert all(d.num_delivered == 2 for d in got)
        assert [d.data for d in taken] == [b"0"]
    finally:
        await conn.close()
