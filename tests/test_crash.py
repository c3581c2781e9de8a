"""Crashes with real processes (issue 2): SIGKILLed runtimes, a restarted NATS server, two runtimes."""

from __future__ import annotations

import asyncio
import collections
import random
import time
from pathlib import Path

from perdure import Client, EmbeddedServer, Worker
from perdure.runtime.embedded import free_port
from perdure.runtime.events import TimerFired, TimerStarted
from perdure.runtime.nats_client import StoredMessage, nats_core

from support import RuntimeProcess, assert_applied_once, watch_history, watch_timer_markers
from workflows import busy, busy_expected, sleeper, spread


async def test_sigkill_at_random_points_loses_nothing(
    nats_server: EmbeddedServer, namespace: str, client: Client
) -> None:
    rng = random.Random(42)
    runtime = await RuntimeProcess(nats_server.url, namespace, "crashy").astart()
    try:
        async with watch_history(client) as watch:
            handles = [await client.start(busy, i, id=f"busy-{i}") for i in range(100)]
            kills = []
            for _ in range(4):
                # Crash at a random point of progress: once some more history steps are written
                # (the 100 executions write about 900 in all).
                target = sum(map(len, watch.steps.values())) + rng.randint(20, 150)
                await watch.wait_for(lambda w, target=target: sum(map(len, w.steps.values())) >= target)
                kills.append(target)
                runtime.kill()
                await runtime.astart()
            results = await asyncio.gather(*[h.result(timeout=120) for h in handles])
    finally:
        runtime.kill()
    print(f"\n[crash] SIGKILLed after {kills} history steps")
    assert results == [busy_expected(i) for i in range(100)]
    for handle in handles:
        assert_applied_once(await handle.history(), handle.id)
    assert await client.list_executions(status="RUNNING") == []


async def test_timer_fires_soon_after_sigkill_and_restart(
    nats_server: EmbeddedServer, namespace: str, client: Client
) -> None:
    """The restarted runtime re-arms the timer in memory from its KV entry: the timer fires at
    its time (never early), from memory, before the key's 4 s TTL would fire it by its expiry
    marker; and if the restart took longer than that, the marker fires it."""
    runtime = await RuntimeProcess(nats_server.url, namespace, "timers").astart()
    try:
        async with watch_history(client) as watch, watch_timer_markers(client, watch) as markers:
            handle = await client.start(sleeper, 3.2, id="sleepy")
            await watch.wait_for(lambda w: any(isinstance(e, TimerStarted) for e in w.events("sleepy")))
            started = next(e for e in watch.events("sleepy") if isinstance(e, TimerStarted))
            runtime.kill()
            await runtime.astart()
            back_at = time.time()
            elapsed = await handle.result(timeout=30)
            await watch.wait_for(lambda w: any(isinstance(e, TimerFired) for e in w.events("sleepy")))
    finally:
        runtime.kill()
    print(
        f"\n[crash] runtime back {back_at - started.fire_at + 3.2:.2f} s into a 3.2 s timer; fired after {elapsed:.3f} s"
    )
    assert elapsed >= 3.2, elapsed
    if back_at < started.fire_at:  # it was up in time to fire it from memory
        assert markers.fired_from_memory("sleepy", "t.1"), markers.markers


async def test_nats_server_restart_mid_run(tmp_path: Path, namespace: str) -> None:
    port = free_port()
    server = EmbeddedServer(store_dir=tmp_path / "nats", port=port)
    server.start()
    runtime = await RuntimeProcess(server.url, namespace, "survivor").astart()
    client = await Client.connect(server.url, namespace=namespace)
    try:
        async with watch_history(client) as watch:
            handles = [await client.start(busy, i, id=f"nats-{i}") for i in range(20)]
            # Mid-run: every execution has started, and some have got further.
            await watch.wait_for(lambda w: len(w.steps) == 20 and sum(map(len, w.steps.values())) >= 40)
        server.stop()
        await runtime.await_line("nats.disconnected")  # the runtime saw the server go
        server = EmbeddedServer(store_dir=tmp_path / "nats", port=port)
        server.start()
        results = await asyncio.gather(*[h.result(timeout=90) for h in handles])
        assert results == [busy_expected(i) for i in range(20)]
        for handle in handles:
            assert_applied_once(await handle.history(), handle.id)
    finally:
        await client.close()
        runtime.kill()
        server.stop()


async def test_two_runtimes_share_the_work(
    nats_server: EmbeddedServer, namespace: str, client: Client
) -> None:
    first = await RuntimeProcess(nats_server.url, namespace, "alpha", env={"PERDURE_NAME": "alpha"}).astart()
    second = await RuntimeProcess(nats_server.url, namespace, "beta", env={"PERDURE_NAME": "beta"}).astart()
    await second.await_line("partition.acquired")  # the partitions were shared out
    try:
        handles = [await client.start(spread, i, id=f"spread-{i}") for i in range(60)]
        results = await asyncio.gather(*[h.result(timeout=60) for h in handles])
    finally:
        first.kill()
        second.kill()
    runners = collections.Counter(r.split(":")[0] for result in results for r in result)
    assert set(runners) == {"alpha", "beta"}, runners
    for i, result in enumerate(results):
        assert sorted(int(r.split(":")[1]) for r in result) == [i * 100 + k for k in range(4)]
    writers: collections.Counter[str] = collections.Counter()
    for handle in handles:
        steps = await handle.history_steps()
        writers.update(step.runtime for step in steps)
        assert_applied_once([e for s in steps for e in (*s.inputs, *s.decisions)], handle.id)
    # Both runtimes hosted executions (wrote history), not only ran activities.
    assert set(writers) == {"alpha", "beta"}, writers


async def test_in_process_worker_stop_is_clean(settings, client: Client) -> None:
    worker = Worker([busy], settings=settings)
    await worker.start()
    assert worker.owned_partitions == list(range(settings.partitions))
    await worker.stop()
    assert worker.owned_partitions == []


async def test_restarted_runtime_fires_only_timers_that_expired_unabsorbed(
    nats_server: EmbeddedServer, namespace: str, client: Client
) -> None:
    """A runtime taking partitions over fires the expiry marker of every timer key: so a timer
    that was cancelled (each activity with a timeout cancels one when it closes) or whose
    firing was absorbed must leave no marker, while one that expired with no runtime up fires."""
    runtime = await RuntimeProcess(nats_server.url, namespace, "quiet").astart()
    try:
        handles = [await client.start(busy, i, id=f"quiet-{i}") for i in range(10)]
        await asyncio.gather(*[h.result(timeout=60) for h in handles])  # 80 timers cancelled, 30 fired
        async with watch_history(client) as watch:
            control = await client.start(sleeper, 1.0, id="control")
            await watch.wait_for(lambda w: any(isinstance(e, TimerStarted) for e in w.events("control")))
        await runtime.aterminate()
        # The control timer expires with no runtime up: wait for its marker (by then every
        # earlier cancellation would have produced one too, had it been re-put with a TTL).
        names, conn = client.names, client.conn
        expired = asyncio.Event()

        async def on_entry(msg: StoredMessage) -> None:
            if msg.headers.get("Nats-Marker-Reason") == "MaxAge":
                expired.set()

        marker_watch = await conn.watch(
            f"KV_{names.timers_bucket}", f"$KV.{names.timers_bucket}.*.control.>", on_entry
        )
        try:
            await asyncio.wait_for(expired.wait(), timeout=10)
        finally:
            await marker_watch.stop()
        inbox = nats_core(conn).jetstream()
        before = (await inbox.stream_info(names.inbox_stream)).state.last_seq
        await runtime.astart()
        await control.result(timeout=30)
        after = (await inbox.stream_info(names.inbox_stream)).state.last_seq
    finally:
        runtime.kill()
    assert after - before == 1, (
        f"{after - before} inbox messages after the restart; only the control timer's firing was due"
    )
