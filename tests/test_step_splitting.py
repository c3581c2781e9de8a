"""A step whose inputs alone exceed the payload limit (issue 10, item 1): many large inbox
messages waiting for one execution are taken in several steps, each history message under
the server's ``max_payload``, instead of one append that can never succeed (it was retried
every second, forever, the execution showing RUNNING)."""

from __future__ import annotations

from perdure import Client, Settings, Worker, workflow
from perdure.actors.step_inputs import take_step
from perdure.runtime.events import SignalReceived
from perdure.runtime.limits import step_inputs_limit
from perdure.runtime.naming import partition_of
from perdure.runtime.nats_consumer import Delivery

from support import watch_history

SIGNALS = 15
SIGNAL_BYTES = 100 * 1024
MAX_PAYLOAD = (
    1024 * 1024
)  # nats-server's default, the test server's  # 15 x 100 KiB: 1.5 MiB of inputs against a 1 MiB max_payload


@workflow
async def collects(n: int) -> int:
    """Waits for ``n`` signals ``part`` and returns the characters received."""
    total = 0
    for _ in range(n):
        total += len(await workflow.wait_signal("part", type=str))
    return total


async def test_inputs_over_the_limit_are_split_over_several_steps(settings: Settings, client: Client) -> None:
    async with Worker([collects], settings=settings), watch_history(client) as watch:
        handle = await client.start(collects, SIGNALS, id="many-big-signals")
        await watch.wait_for(lambda w: bool(w.steps.get(handle.id)), timeout=20)
    names = client.names
    consumer = (names.inbox_stream, names.inbox_consumer(partition_of(handle.id, settings.partitions)))
    before = await client.conn.consumer_info(*consumer)
    # With no runtime running, the signals wait in the inbox: the next owner pulls them all
    # at once, so they reach the execution's actor as one batch.
    for i in range(SIGNALS):
        await handle.signal("part", str(i % 10) * SIGNAL_BYTES, id=f"part-{i}")
    async with Worker([collects], settings=settings):
        assert await handle.result(timeout=30) == SIGNALS * SIGNAL_BYTES
    # Deliveries of the signals (the consumer counts them; a runtime taking the partition
    # may have created it anew).
    after = await client.conn.consumer_info(*consumer)
    same = after.created == before.created
    delivered = after.delivered.consumer_seq - (before.delivered.consumer_seq if same else 0)
    stored = await client.conn.read_subject(names.history_stream, names.history(handle.id))
    sizes = [len(m.data) + sum(len(k) + len(v) for k, v in m.headers.items()) for m in stored]
    steps = await handle.history_steps()
    received = [e for s in steps for e in s.inputs if isinstance(e, SignalReceived)]
    assert len(received) == SIGNALS
    assert delivered == SIGNALS  # each taken in at its first delivery: no step failed
    assert len([s for s in steps if any(isinstance(e, SignalReceived) for e in s.inputs)]) >= 2
    assert max(sizes) <= client.conn.max_payload, sizes
    description = await handle.describe()
    assert description.status == "COMPLETED", description


def delivery(size: int, seq: int) -> Delivery:
    return Delivery(subject="x", data=b"x" * size, headers={}, stream_seq=seq, num_delivered=1, _msg=None)


def test_take_step_cuts_the_mailbox_in_order() -> None:
    limit = step_inputs_limit(MAX_PAYLOAD)  # half of what fits in one message
    sizes = [0.4, 0.4, 0.3, 1.0, 0.05, 0.05]
    mailbox = [delivery(int(f * limit), i) for i, f in enumerate(sizes, start=1)]
    parts = []
    while mailbox:
        batch, mailbox = take_step(mailbox, MAX_PAYLOAD)
        parts.append([d.stream_seq for d in batch])
    # Within the limit when it can be; a message as large as it goes alone, never dropped.
    assert parts == [[1, 2], [3], [4], [5, 6]]
    small = [delivery(1, i) for i in range(3)]
    assert take_step(small, MAX_PAYLOAD) == (small, [])
