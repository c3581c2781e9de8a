"""Poison messages (issue 10, item 2): whatever cannot be processed is parked in ``<NS>_DEAD``
and shows a visible status; nothing loops, nothing holds the inbox, nothing is lost.

- a start of a workflow no runtime hosts: BLOCKED with the reason, its messages parked (not
  held by the inbox consumer), ``terminate`` ends it, deploying the code resumes it;
- an inbox message that does not decode: parked with the reason, the subject and its data;
- garbage on a history subject: BLOCKED with the reason, no retry loop, ``terminate`` ends it;
- a step that crashes again and again: BLOCKED after a few deliveries, resumed by a redeploy;
- work for an activity no runtime hosts: a warning naming it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import hypothesis
import msgspec
import pytest
from hypothesis import strategies as st

from perdure import (
    ChildWorkflowError,
    Client,
    Settings,
    Worker,
    WorkflowTerminated,
    activity,
    sleep,
    workflow,
)
from perdure.actors.instance import WorkflowInstance
from perdure.runtime import codec
from perdure.runtime.events import ActivityCompleted, ActivityConcluded, TerminateRequested
from perdure.runtime.events import WorkflowTerminated as TerminatedEvent
from perdure.runtime.messages import REPLY_HEADER
from perdure.runtime.nats_client import StoredMessage
from perdure.runtime.provision import Provisioner

from support import RuntimeProcess, watch_history


@activity
async def add_one(x: int) -> int:
    return x + 1


@workflow
async def plain(x: int) -> int:
    return await add_one(x)


@workflow
async def later(x: int) -> int:
    """Deployed only by the second runtime of the deploy test; waits for a signal sent while blocked."""
    extra = await workflow.wait_signal("extra", type=int)
    return await add_one(x + extra)


@workflow
async def parent_of_later(x: int) -> str:
    """Starts a child whose workflow is not deployed; learns when it is terminated."""
    try:
        return str(await later(x, id="kid-1"))
    except ChildWorkflowError as exc:
        return f"child ended: {exc.cause.code if exc.cause else '?'}"


@workflow
async def waits(x: int) -> int:
    return x + await workflow.wait_signal("go", type=int)


async def _blocked(client: Client, execution_id: str, timeout: float = 20.0) -> Any:
    """The execution's description once it shows BLOCKED (the index is watched, not polled)."""
    async with asyncio.timeout(timeout):
        async for description in client.get_handle(execution_id).watch():
            if description.status == "BLOCKED":
                return description
    raise AssertionError("unreachable")


async def _dead(client: Client, subject: str) -> list[StoredMessage]:
    return await client.conn.read_subject(f"{client.names.namespace.upper()}_DEAD", subject)


async def _inbox_drained(client: Client, timeout: float = 5.0) -> bool:
    """The inbox stream holds nothing (acks are not confirmed by the server: poll its count)."""
    async with asyncio.timeout(timeout):
        while (await client.conn.stream_info(client.names.inbox_stream)).state.messages:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # no event tells that an ack was applied
    return True


@pytest.fixture
async def dead_letters(client: Client) -> AsyncIterator[asyncio.Queue[StoredMessage]]:
    """Everything stored on ``<ns>.dead.>`` as it is published (a core subscription)."""
    sub, messages = await client.conn.subscribe(f"{client.names.namespace}.dead.>")
    await client.conn.flush()
    queue: asyncio.Queue[StoredMessage] = asyncio.Queue()

    async def pump() -> None:
        async for message in messages:
            queue.put_nowait(message)

    task = asyncio.ensure_future(pump())
    yield queue
    task.cancel()
    await sub.stop()


# ------------------------------------------------------------------ unknown workflow


async def test_unknown_workflow_is_blocked_visibly_and_terminate_ends_it(
    settings: Settings, client: Client, dead_letters: asyncio.Queue[StoredMessage]
) -> None:
    async with Worker([plain, add_one], settings=settings):
        handle = await client.start("not_deployed", 7, id="ghost-1")
        with pytest.raises(TimeoutError):
            await handle.result(timeout=1.0)
        description = await _blocked(client, "ghost-1")
        assert description.workflow == "not_deployed"
        assert description.error is not None and description.error.code == "workflow.unknown"
        assert "not_deployed" in description.error.message
        listed = await client.list_executions(status="BLOCKED")
        assert [d.execution_id for d in listed] == ["ghost-1"]

        parked = await asyncio.wait_for(dead_letters.get(), 10)
        assert parked.headers["Perdure-Dead-Execution"] == "ghost-1"
        assert parked.headers["Perdure-Dead-Code"] == "workflow.unknown"
        assert parked.headers["Perdure-Dead-Subject"].endswith(".ghost-1")
        assert b'"not_deployed"' in parked.data
        assert await _inbox_drained(client)  # acked out of the inbox once parked

        await handle.terminate("never deployed")
        with pytest.raises(WorkflowTerminated, match="never deployed"):
            await handle.result(timeout=10)
        events = await handle.history()
        assert any(isinstance(e, TerminateRequested) for e in events)
        assert isinstance(events[-1], TerminatedEvent)
        assert (await handle.describe()).status == "TERMINATED"
        # Ended: its parked messages are gone, and later messages to it do not block it again.
        assert await _dead(client, f"{client.names.namespace}.dead.parked.*.ghost-1") == []
        await handle.signal("late", 1)
        await handle.terminate("again")
        assert await client.start(plain, 1, id="after-ghost") is not None
        assert await client.get_handle("after-ghost").result(timeout=20) == 2
        assert (await handle.describe()).status == "TERMINATED"


async def test_terminating_a_blocked_child_tells_its_parent(settings: Settings, client: Client) -> None:
    async with Worker([parent_of_later, add_one], settings=settings):
        parent = await client.start(parent_of_later, 1, id="parent-1")
        description = await _blocked(client, "kid-1")
        assert description.error.code == "workflow.unknown"
        await client.terminate("kid-1", "no such code")
        assert await parent.result(timeout=20) == "child ended: workflow.terminated"


async def test_unknown_starts_do_not_starve_normal_workflows(settings: Settings, client: Client) -> None:
    """5,000 starts of an unknown workflow used to hold every inbox slot (0 of 6 finished)."""
    async with Worker([plain, add_one], settings=settings):
        ids = [f"ghost-{i}" for i in range(5000)]
        for chunk in range(0, len(ids), 500):
            await asyncio.gather(*(client.start("not_deployed", 0, id=i) for i in ids[chunk : chunk + 500]))
        began = time.monotonic()
        handles = [await client.start(plain, i, id=f"normal-{i}") for i in range(6)]
        results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
        elapsed = time.monotonic() - began
        assert results == [i + 1 for i in range(6)]
        print(f"6 normal workflows finished {elapsed:.2f} s after 5,000 unknown starts")
        assert elapsed < 30
        last = await _blocked(client, ids[-1], timeout=60)
        assert last.error.code == "workflow.unknown"


async def test_deploying_the_workflow_resumes_blocked_executions(
    settings: Settings, client: Client, dead_letters: asyncio.Queue[StoredMessage]
) -> None:
    async with Worker([plain, add_one], settings=settings):
        handle = await client.start(later, 10, id="early-1")
        await _blocked(client, "early-1")
        await handle.signal("extra", 5)  # parked too, after the start
        parked = [await asyncio.wait_for(dead_letters.get(), 10) for _ in range(2)]
        assert [b'"start"' in p.data for p in parked] == [True, False]
    async with Worker([plain, later, add_one], settings=settings):
        assert await handle.result(timeout=20) == 16
    assert (await handle.describe()).status == "COMPLETED"
    assert await _dead(client, f"{client.names.namespace}.dead.parked.*.early-1") == []


# ----------------------------------------------------------------- undecodable inbox


async def test_undecodable_inbox_message_is_dead_lettered(
    settings: Settings, client: Client, dead_letters: asyncio.Queue[StoredMessage]
) -> None:
    async with Worker([plain, add_one], settings=settings):
        await client.conn.publish(
            client.names.inbox("junk-1"), b"\x00 not json", headers={"X-Origin": "test"}
        )
        parked = await asyncio.wait_for(dead_letters.get(), 10)
        assert parked.subject == f"{client.names.namespace}.dead.poison.junk-1"
        assert parked.data == b"\x00 not json"
        assert parked.headers["X-Origin"] == "test"
        assert parked.headers["Perdure-Dead-Code"] == "payload.invalid"
        assert "does not decode" in parked.headers["Perdure-Dead-Reason"]
        assert parked.headers["Perdure-Dead-Subject"].endswith(".junk-1")
        assert await _inbox_drained(client)
        # A request that does not decode is answered with its error, not left to time out.
        sub, replies = await client.conn.subscribe("junk-replies")
        await client.conn.publish(client.names.inbox("junk-2"), b"{", headers={REPLY_HEADER: "junk-replies"})
        reply = codec.api_reply.decode((await asyncio.wait_for(anext(replies), 10)).data)
        await sub.stop()
        assert not reply.ok and reply.error is not None and reply.error.code == "payload.invalid"
        assert await (await client.start(plain, 1, id="after-junk")).result(timeout=20) == 2


async def test_poison_beside_a_blocked_start_is_dead_lettered_once(
    settings: Settings, client: Client, dead_letters: asyncio.Queue[StoredMessage]
) -> None:
    """Both wait in the inbox before the runtime starts, so one step gets both: the junk is
    dead-lettered by decoding, the start parked by the block, and the junk not again."""
    await Provisioner(client.conn, settings).provision()
    await client.start("not_deployed", 1, id="ghost-junk")
    await client.conn.publish(client.names.inbox("ghost-junk"), b"junk")
    async with Worker([plain, add_one], settings=settings):
        seen = []
        while not seen or ".dead.parked." not in seen[-1].subject:
            seen.append(await asyncio.wait_for(dead_letters.get(), 10))
        assert [m.subject.split(".")[2] for m in seen] == ["poison", "parked"]
        assert await _inbox_drained(client)


def _fuzzed_inbox_bodies() -> list[bytes]:
    """Random bytes and well-formed but wrong JSON (Hypothesis, derandomized: the same each run)."""
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=8,
    )
    tagged = st.builds(
        lambda kind, extra: {"type": kind, **extra},
        st.sampled_from(["start", "signal", "activity.result", "timer.expired", "child.result", "nope"]),
        st.dictionaries(st.sampled_from(["workflow", "name", "run", "seq", "input", "payload"]), json_values),
    )
    bodies = st.one_of(
        st.binary(max_size=64), json_values.map(msgspec.json.encode), tagged.map(msgspec.json.encode)
    )
    out: list[bytes] = []

    @hypothesis.settings(max_examples=80, derandomize=True, database=None)
    @hypothesis.given(bodies)
    def collect(body: bytes) -> None:
        out.append(body)

    collect()
    return out


async def test_fuzzed_inbox_messages_are_dead_lettered_or_handled(settings: Settings, client: Client) -> None:
    bodies = _fuzzed_inbox_bodies()
    undecodable = 0
    for body in bodies:
        try:
            codec.inbox_message.decode(body)
        except msgspec.DecodeError:
            undecodable += 1
    assert undecodable > len(bodies) // 2  # mostly poison: the test means something
    async with Worker([plain, add_one], settings=settings):
        for i, body in enumerate(bodies):
            await client.conn.publish(client.names.inbox(f"fuzz-{i % 7}"), body)
        assert await _inbox_drained(client, timeout=20)  # every one acked: handled or parked
        poison = await _dead(client, f"{client.names.namespace}.dead.poison.*")
        assert len(poison) == undecodable
        assert await (await client.start(plain, 1, id="after-fuzz")).result(timeout=20) == 2


# ------------------------------------------------------------------- garbage history


async def test_garbage_on_a_history_subject_blocks_without_a_retry_loop(
    settings: Settings, client: Client
) -> None:
    async with Worker([waits, add_one], settings=settings):
        handle = await client.start(waits, 1, id="garbled-1")
        async for description in handle.watch():
            if description.status == "RUNNING":
                break
        await client.conn.publish(client.names.history("garbled-1"), b"{garbage")
        await handle.signal("go", 2)
        description = await _blocked(client, "garbled-1")
        assert description.error.code == "history.invalid"
        assert "does not decode" in description.error.message
        parked = await _dead(client, f"{client.names.namespace}.dead.parked.*.garbled-1")
        assert len(parked) == 1 and b'"go"' in parked[0].data
        assert await _inbox_drained(client)  # nothing waits for a redelivery

        await handle.terminate("garbled")
        with pytest.raises(WorkflowTerminated):
            await handle.result(timeout=10)
        steps = await client.conn.read_subject(client.names.history_stream, client.names.history("garbled-1"))
        assert b"workflow.terminated" in steps[-1].data
        await handle.signal("go", 3)  # a closed execution: ignored, not blocked again
        assert await (await client.start(waits, 1, id="after-garble")).signal("go", 1) is None
        assert await client.get_handle("after-garble").result(timeout=20) == 2
        assert (await handle.describe()).status == "TERMINATED"


# --------------------------------------------------------------------- crashing step


async def test_a_step_that_keeps_crashing_is_parked_and_a_redeploy_resumes_it(
    settings: Settings, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = WorkflowInstance.activate

    def crashing(self: WorkflowInstance, *args: Any, **kw: Any) -> Any:
        if self.execution_id == "crashy-1":
            raise RuntimeError("bug in the runtime")
        return original(self, *args, **kw)

    monkeypatch.setattr(WorkflowInstance, "activate", crashing)
    async with Worker([plain, add_one], settings=settings):
        handle = await client.start(plain, 41, id="crashy-1")
        description = await _blocked(client, "crashy-1", timeout=40)
        assert description.error.code == "step.crashed"
        assert "bug in the runtime" in description.error.message
        assert await _inbox_drained(client)
        assert await (await client.start(plain, 1, id="beside-crashy")).result(timeout=20) == 2
    monkeypatch.setattr(WorkflowInstance, "activate", original)  # the fixed code is deployed
    async with Worker([plain, add_one], settings=settings):
        assert await handle.result(timeout=20) == 42


async def test_terminate_ends_an_execution_blocked_by_crashes(
    settings: Settings, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = WorkflowInstance.activate

    def crashing(self: WorkflowInstance, *args: Any, **kw: Any) -> Any:
        if self.execution_id == "crashy-2" and not self.closed:
            raise RuntimeError("bug in the runtime")
        return original(self, *args, **kw)

    monkeypatch.setattr(WorkflowInstance, "activate", crashing)
    async with Worker([waits, add_one], settings=settings):
        handle = await client.start(waits, 1, id="crashy-2")
        await _blocked(client, "crashy-2", timeout=40)
        await handle.terminate("stuck")
        with pytest.raises(WorkflowTerminated, match="stuck"):
            await handle.result(timeout=10)
        await handle.signal("go", 1)  # to a closed execution: ignored, no crash, not parked
        assert await _inbox_drained(client)
        assert await _dead(client, f"{client.names.namespace}.dead.parked.*.crashy-2") == []
        assert (await handle.describe()).status == "TERMINATED"


async def test_a_step_that_crashes_on_eager_outcomes_is_parked(
    settings: Settings, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An eager attempt's outcome reaches the actor from this process, always on "delivery" 1:
    the crashes are counted per execution in memory, so its step is parked all the same."""
    original = WorkflowInstance.activate

    def crashing(self: WorkflowInstance, inputs: list[Any], *args: Any, **kw: Any) -> Any:
        if self.execution_id == "crashy-eager" and any(isinstance(e, ActivityCompleted) for e in inputs):
            raise RuntimeError("bug on outcomes")
        return original(self, inputs, *args, **kw)

    monkeypatch.setattr(WorkflowInstance, "activate", crashing)
    assert settings.eager_activities
    async with Worker([plain, add_one], settings=settings):
        handle = await client.start(plain, 41, id="crashy-eager")
        description = await _blocked(client, "crashy-eager", timeout=40)
        assert description.error.code == "step.crashed"
        assert "bug on outcomes" in description.error.message
        steps = await handle.history_steps()
        assert steps[0].eager  # the attempt ran eagerly: its outcome never came by the inbox
        parked = await _dead(client, f"{client.names.namespace}.dead.parked.*.crashy-eager")
        assert len(parked) == 1 and b"activity.result" in parked[0].data
        assert await _inbox_drained(client)  # the start is acked once its outcome is parked
    monkeypatch.setattr(WorkflowInstance, "activate", original)  # the fixed code is deployed
    async with Worker([plain, add_one], settings=settings):
        assert await handle.result(timeout=20) == 42


# ---------------------------------------------------------------------- nondeterminism


@workflow(name="shifting")
async def shifting_v1(x: int) -> int:
    y = await add_one(x)
    return y + await workflow.wait_signal("go", type=int)


@workflow(name="shifting")
async def shifting_v2(x: int) -> int:
    await sleep(1)  # a different first command than the recorded one
    return x


async def _started_and_waiting(client: Client, execution_id: str) -> Any:
    """Start ``shifting_v1`` and return once its activity closed (it then waits for "go")."""
    async with watch_history(client) as watch:
        handle = await client.start(shifting_v1, 1, id=execution_id)
        await watch.wait_for(
            lambda w: any(isinstance(e, ActivityConcluded) for e in w.events(execution_id)), timeout=20
        )
    return handle


async def test_nondeterministic_execution_is_parked_and_resumed_by_compatible_code(
    settings: Settings, client: Client
) -> None:
    async with Worker([shifting_v1, add_one], settings=settings):
        handle = await _started_and_waiting(client, "shifting-1")
    async with Worker([shifting_v2, add_one], settings=settings):
        await handle.signal("go", 10)
        description = await _blocked(client, "shifting-1")
        assert description.error.code == "workflow.nondeterministic"
        assert await _inbox_drained(client)  # parked, not held by the inbox consumer (was: nak 30 s)
    async with Worker([shifting_v1, add_one], settings=settings):
        assert await handle.result(timeout=20) == 12


async def test_terminate_ends_a_nondeterministic_execution_for_good(
    settings: Settings, client: Client
) -> None:
    async with Worker([shifting_v1, add_one], settings=settings):
        handle = await _started_and_waiting(client, "shifting-2")
    async with Worker([shifting_v2, add_one], settings=settings):
        await handle.signal("go", 10)
        await _blocked(client, "shifting-2")
        await handle.terminate("incompatible deploy")
        with pytest.raises(WorkflowTerminated, match="incompatible deploy"):
            await handle.result(timeout=10)
        await handle.signal("go", 11)  # a closed run is not replayed again: not blocked again
        assert await _inbox_drained(client)
    async with Worker([shifting_v1, add_one], settings=settings):  # nothing is resumed
        await handle.signal("go", 12)
        assert await _inbox_drained(client)
    assert (await handle.describe()).status == "TERMINATED"
    steps = await handle.history_steps()
    assert steps[-1].ended_blocked == "workflow.nondeterministic"


# ------------------------------------------------------------------ unhosted activity


async def test_work_for_an_activity_no_runtime_hosts_is_reported(
    nats_server: Any, namespace: str, client: Client
) -> None:
    runtime = RuntimeProcess(
        nats_server.url, namespace, "rt-unhosted", targets=("poison_workflows:calls_elsewhere",)
    )
    await runtime.astart()
    try:
        handle = await client.start("calls_elsewhere", 1, id="orphan-work-1")
        line = await runtime.await_line("activity.unhosted", timeout=40)
        assert "elsewhere" in line and "pending=1" in line
        assert (await handle.describe()).status == "RUNNING"
    finally:
        await runtime.aterminate()
