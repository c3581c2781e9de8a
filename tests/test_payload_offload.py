"""Issue 12, payloads of any size: over the offload threshold, payloads go to the namespace's
object store and only references go to history, inboxes, work items and KV records
(runtime/payload_seal.py). Against the real server of the fixtures."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
from offload_workflows import OFFLOAD, continue_once, digest, pattern, round_trip

from perdure import Client, Settings, Worker
from perdure.runtime.events import ActivityCompleted, WorkflowStarted
from perdure.runtime.limits import DEFAULT_OFFLOAD_THRESHOLD
from perdure.runtime.nats_objects import ObjectBucket
from perdure.runtime.payload_seal import REF_PREFIX, _ref_keys

MB = 1024 * 1024
BIG = 50 * MB


async def raw_history(client: Client, execution_id: str) -> list[bytes]:
    names = client.names
    stored = await client.conn.read_subject(names.history_stream, names.history(execution_id))
    return [s.data for s in stored]


async def wait_for_step(client: Client, execution_id: str, text: bytes, timeout: float = 60.0) -> list[bytes]:
    """The raw history once a step containing ``text`` is stored (polled: no event to await
    from outside the runtime)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        steps = await raw_history(client, execution_id)
        if any(text in s for s in steps):
            return steps
        await asyncio.sleep(0.1)
    raise AssertionError(f"no step with {text!r} in the history of {execution_id}")


async def test_50mb_input_and_activity_result_round_trip_and_replay(
    settings: Settings, client: Client
) -> None:
    data = pattern(BIG, "input")
    async with Worker(OFFLOAD, settings=settings):
        handle = await client.start(round_trip, data, id="big")
        # The workflow waits for "go" once the activity's result is in history.
        await wait_for_step(client, "big", b"activity.completed", timeout=120)
    # History holds references only: every stored step is small.
    steps = await raw_history(client, "big")
    assert max(len(s) for s in steps) < DEFAULT_OFFLOAD_THRESHOLD // 8, [len(s) for s in steps]
    assert sum(s.count(REF_PREFIX) for s in steps) == 2  # the input and the activity's result
    # A fresh runtime (empty cache) replays the history, reading the payloads back.
    async with Worker(OFFLOAD, settings=settings):
        await handle.signal("go")
        result = await handle.result(timeout=120)
    assert len(result) == BIG + 64
    assert result[:BIG] == pattern(BIG, "activity") and result[BIG:] == digest(data)
    events = await handle.history()
    started = next(e for e in events if isinstance(e, WorkflowStarted))
    completed = next(e for e in events if isinstance(e, ActivityCompleted))
    assert len(started.input) == BIG + 2 and len(completed.result) == BIG + 2  # JSON strings
    # The index record holds a reference too (the result is read back through it).
    index = await client.index.get("big")
    assert index is not None and len(index.data) < 4096 and REF_PREFIX in index.data


async def _all_gone(bucket: ObjectBucket, keys: set[str]) -> bool:
    return not any([await bucket.exists(key) for key in keys])


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


async def test_purging_old_runs_removes_their_objects(settings: Settings, client: Client) -> None:
    data = pattern(2 * MB, "purge")
    bucket = ObjectBucket(client.conn, client.names.payloads_bucket)
    async with Worker(OFFLOAD, settings=settings):
        handle = await client.start(continue_once, data, id="purged")
        first_run = await wait_for_step(client, "purged", b"activity.completed")
        keys = _ref_keys(first_run)
        assert len(keys) == 2, keys  # the input and the activity's result
        for key in keys:
            assert key.startswith("purged/") and await bucket.exists(key), key
        await handle.signal("next")
        assert await handle.result(timeout=60) == len("small")
        # The old run is purged after the new run's first step (which returns) is stored.
        await wait_until(lambda: _all_gone(bucket, keys), "the first run's objects deleted")
        assert not _ref_keys(await raw_history(client, "purged"))  # the run left holds none


async def test_a_step_offloads_its_largest_payloads_first_until_it_fits(
    settings: Settings, client: Client
) -> None:
    """The walk finds payloads nested in a step's events; only as many as needed go out."""
    from perdure.runtime import codec
    from perdure.runtime.events import HistoryStep, SignalReceived
    from perdure.runtime.payload_seal import PayloadPolicy, PayloadSealer
    from perdure.runtime.provision import Provisioner

    await Provisioner(client.conn, settings).provision()
    sealer = PayloadSealer(client.conn, client.names, PayloadPolicy(threshold=256 * 1024))
    sizes = {"a": 200 * 1024, "b": 100 * 1024, "c": 10}
    step = HistoryStep(
        time=1.0,
        inputs=[
            SignalReceived(name=name, payload=msgspec.Raw(codec.encode(pattern(size, name))))
            for name, size in sizes.items()
        ],
    )
    sealed = await sealer.encode(step, "walk")
    assert len(sealed) < 256 * 1024
    assert sealed.count(REF_PREFIX) == 1  # only the 200 KiB one: then the step fits
    back = await sealer.decode(codec.history_step, sealed, what="step")
    assert back == step
    assert await sealer.encode(HistoryStep(time=1.0), "walk") == codec.encode(HistoryStep(time=1.0))


async def test_the_payload_bucket_keeps_objects_for_the_retention_period(
    settings: Settings, client: Client
) -> None:
    """``payload_retention`` (PERDURE_PAYLOAD_RETENTION) is the object store's max age; 0 keeps them."""
    from dataclasses import replace

    from perdure.runtime.provision import Provisioner

    await Provisioner(client.conn, replace(settings, payload_retention=7 * 86400)).provision()
    info = await client.conn.stream_info(f"OBJ_{client.names.payloads_bucket}")
    assert info.config.max_age == 7 * 86400
    other = replace(settings, namespace=settings.namespace + "k")
    await Provisioner(client.conn, other).provision()
    kept = await client.conn.stream_info(f"OBJ_{other.names.payloads_bucket}")
    assert not kept.config.max_age


async def test_a_large_checkpoint_and_completion_through_the_client(
    settings: Settings, client: Client
) -> None:
    """Token verbs carry large payloads too: a 2 MB heartbeat checkpoint reaches the retry,
    a 3 MB completion reaches the workflow."""
    from activity_workflows import tokens
    from offload_workflows import external_result

    async with Worker(OFFLOAD, settings=settings):
        handle = await client.start(external_result, 1, id="ext")
        first = await asyncio.wait_for(tokens("ext").get(), 20)
        checkpoint = pattern(2 * MB, "checkpoint")
        await client.heartbeat_activity(first, checkpoint)
        await client.fail_activity(first, "try again")
        second = await asyncio.wait_for(tokens("ext").get(), 20)
        assert await asyncio.wait_for(tokens("ext").get(), 20) == f"checkpoint:{digest(checkpoint)}"
        result = pattern(3 * MB, "completion")
        await client.complete_activity(second, result)
        assert await handle.result(timeout=30) == result


async def test_work_items_carry_references_both_ways(settings: Settings, client: Client) -> None:
    """Without eager attempts, a large activity input goes out in a work item and its large
    result comes back through the inbox: both as references, both read back."""
    from dataclasses import replace

    from offload_workflows import SECRET, secret

    text = pattern(2 * MB, "work")
    async with Worker(SECRET, settings=replace(settings, eager_activities=False)):
        handle = await client.start(secret, text, id="work")
        await handle.signal("more", "?")
        assert await handle.result(timeout=60) == text + "!?"
    steps = await raw_history(client, "work")
    assert max(len(s) for s in steps) < 4096
    assert len(_ref_keys(steps)) == 3  # the input, the activity's result, the workflow's result


async def test_a_child_takes_and_returns_large_payloads(settings: Settings, client: Client) -> None:
    from offload_workflows import parent_of_big_child

    text = pattern(3 * MB, "child")
    async with Worker(OFFLOAD, settings=settings):
        handle = await client.start(parent_of_big_child, text, id="parent")
        assert await handle.result(timeout=60) == text[::-1]
