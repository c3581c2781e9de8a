"""A timer's firing given up while its partition was not ours fires once it is ours again
(issue 10 item 12, found in the cluster failover runs).

A timer fired from memory is published to the inbox, retried while the inbox refuses (its
leader being elected), and given up if the partition stops being ours, since its next owner's
watcher replays the expiry marker. When that next owner is this runtime (a lease that lapsed
while the leases stream elected a leader, taken back in place), the replayed marker was
ignored as "already fired from memory": the firing was never published and the execution
waited for ever (10 executions stuck RUNNING after a node of the 3-node cluster was killed).
"""

from __future__ import annotations

import asyncio
import copy
import time

from perdure import EmbeddedServer, Settings
from perdure.actors.timers import TimerKey, TimerService
from perdure.runtime.naming import partition_of
from perdure.runtime.nats_client import Connection, StoredMessage, nats_core
from perdure.runtime.provision import Provisioner


async def test_a_firing_given_up_while_not_ours_fires_when_ours_again(
    nats_server: EmbeddedServer, settings: Settings
) -> None:
    conn = await Connection.connect(nats_server.url)
    timers: TimerService | None = None
    try:
        await Provisioner(conn, settings).provision()
        names = settings.names
        execution = "lapsed-timer"
        key = TimerKey(partition_of(execution, settings.partitions), execution, 1, "t.1")
        ours = True
        timers = TimerService(conn, names)
        timers.set_ownership(lambda partition: ours)
        await timers.watch_partition(key.partition)

        marker = asyncio.Event()

        async def on_entry(msg: StoredMessage) -> None:
            if msg.headers.get("Nats-Marker-Reason") == "MaxAge":
                marker.set()

        bucket = names.timers_bucket
        markers = await conn.watch(
            f"KV_{bucket}", f"$KV.{bucket}.{key.key()}", on_entry, last_per_subject=False
        )
        js = nats_core(conn).jetstream()
        config = (await js.stream_info(names.inbox_stream)).config
        refusing = copy.deepcopy(config)
        refusing.subjects, refusing.subject_transform = [f"{names.namespace}.refused.*"], None
        await js.update_stream(refusing)  # publishes to the inbox fail, as during an election
        try:
            await (await timers.put(key, time.time() + 0.2))
            ours = False  # the lease lapses before the timer fires: its firing is given up
            await asyncio.wait_for(marker.wait(), 10)  # the key expired meanwhile (not ours: ignored)
        finally:
            await js.update_stream(config)
        fired, firings = await conn.subscribe(names.inbox(execution))  # publishes from now on
        await conn.flush()
        ours = True  # taken back in place: its timers are watched afresh (the marker replays)
        await timers.rewatch_partition(key.partition)
        try:
            message = await asyncio.wait_for(anext(firings), 5)
        finally:
            await fired.stop()
            await markers.stop()
        assert b"timer.expired" in message.data
    finally:
        if timers is not None:
            await timers.stop()
        await conn.close()
