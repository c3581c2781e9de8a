"""One host per partition in a runtime (issue 10 item 12, the cluster failover's hang).

An ownership tick that fails half-way (it had taken a lapsed lease back, then NATS timed out
re-watching that partition's timers) left the other lapsed partitions out of its leases while
their hosts ran on; the next tick acquired them again and the worker started a second host
for each. The two hosts then deleted each other's inbox consumer, again and again: on the
3-node cluster, executions of those partitions made no progress for over 90 s.
"""

from __future__ import annotations

import asyncio

from perdure import Client, Settings, Worker
from perdure.runtime.naming import partition_of

from workflows import busy, busy_expected, double


async def test_acquiring_a_partition_still_hosted_keeps_its_host(settings: Settings, client: Client) -> None:
    async with Worker([busy, double], settings=settings) as worker:
        partition = 0
        host = worker._hosts[partition]
        await worker._acquire(partition)  # what the tick after the half-failed one did
        assert worker._hosts[partition] is host
        ids = [
            f"hosted-{i}" for i in range(200) if partition_of(f"hosted-{i}", settings.partitions) == partition
        ]
        handles = [await client.start(busy, i, id=execution) for i, execution in enumerate(ids[:5])]
        results = await asyncio.gather(*(h.result(timeout=20) for h in handles))
        assert results == [busy_expected(i) for i in range(len(handles))]
        assert host.consuming and worker._hosts[partition] is host
