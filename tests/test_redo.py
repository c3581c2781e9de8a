"""Issue 10 item 8a: redoing an absorbed message's steps never runs a closed activity again.

An inbox message that history already absorbed comes back after a SIGKILL, or when its
partition's consumer is recreated. Its steps' effects are performed again, but an attempt
that history shows closed (or superseded) is not started again, an attempt is never run twice
at once in one runtime, and a token handed out stays valid. Activities append a line per run
to a side-effect log (tests/redo_workflows.py), which is what these tests count.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from redo_workflows import (
    answered,
    chain,
    chain_expected,
    close_gate,
    gate,
    hand_over,
    late_answer,
    open_gate,
    runs,
    step,
)

from perdure import Client, EmbeddedServer, Settings, Worker
from perdure.actors.timers import TimerKey
from perdure.runtime import codec
from perdure.runtime.events import ActivityRetrying, ActivityScheduled
from perdure.runtime.messages import ActivityResult, TimerExpired
from perdure.runtime.naming import partition_of
from perdure.runtime.nats_admin import delete_consumer
from perdure.runtime.nats_client import nats_core
from perdure.runtime.tokens import decode_token

from support import RuntimeProcess, assert_applied_once, watch_history

ACTIVITIES = ("step", "gate", "hand_over")


async def wait_until(predicate: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    """Poll a condition that has no event to await (a file another process appends to, a
    KV record another process writes)."""
    deadline = time.monotonic() + timeout
    while not await _holds(predicate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what or predicate}")
        await asyncio.sleep(0.02)


async def _holds(predicate: Callable[[], object]) -> bool:
    value = predicate()
    if asyncio.iscoroutine(value):
        value = await value
    return bool(value)


async def handed_over(client: Client, execution_id: str, partitions: int, seq: int = 4) -> bool:
    """The token-holding attempt (activity ``seq``) is flagged started: no recovery re-runs it."""
    names = client.names
    key = TimerKey(partition_of(execution_id, partitions), execution_id, 1, f"a.{seq}.1.hb")
    stored = await client.conn.get_last(f"KV_{names.timers_bucket}", f"$KV.{names.timers_bucket}.{key.key()}")
    return stored is not None and stored.is_value and codec.activity_record.decode(stored.data).started


async def work_drained(client: Client) -> bool:
    """Every work item published so far has been run and acked."""
    js = nats_core(client.conn).jetstream()
    for name in ACTIVITIES:
        try:
            info = await js.consumer_info(client.names.work_stream, client.names.work_consumer(name))
        except Exception:
            continue  # no runtime created this consumer: nothing was published for it
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def recreate_inbox_consumer(client: Client, partition: int) -> None:
    """Delete the partition's inbox consumer while its runtime holds the lease: the runtime
    recreates it (what happens after a server restart or a consumer lost on a cluster)."""
    names = client.names
    consumer = names.inbox_consumer(partition)
    js = nats_core(client.conn).jetstream()
    before = await js.consumer_info(names.inbox_stream, consumer)
    await delete_consumer(client.conn, stream=names.inbox_stream, name=consumer)

    async def recreated() -> bool:
        try:
            info = await js.consumer_info(names.inbox_stream, consumer)
        except Exception:
            return False
        return info.created != before.created

    await wait_until(recreated, what="the inbox consumer recreated")


def counts(path: Path) -> collections.Counter[str]:
    """Runs per activity attempt line, with the token left out (``token 3.h``)."""
    return collections.Counter(" ".join(line.split()[:2]) for line in runs(str(path)))


def gates_running(path: Path) -> int:
    return sum(1 for line in runs(str(path)) if line.startswith("gate "))


def tokens_of(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = collections.defaultdict(list)
    for line in runs(str(path)):
        kind, x, *rest = line.split()
        if kind == "token":
            out[x].append(rest[0])
    return out


async def test_redo_after_sigkill_runs_no_closed_activity_again(
    nats_server: EmbeddedServer, namespace: str, client: Client, tmp_path: Path
) -> None:
    log, flag = tmp_path / "runs.log", tmp_path / "gate"
    log.touch()
    env = {"PERDURE_TEST_RUN_LOG": str(log), "PERDURE_TEST_GATE": str(flag)}
    runtime = RuntimeProcess(nats_server.url, namespace, "redo", targets=("redo_workflows",), env=env)
    await runtime.astart()
    n, partitions = 10, Settings().partitions
    ids = [f"redo-{i}" for i in range(n)]
    try:
        handles = [await client.start(chain, i, id=ids[i]) for i in range(n)]
        # Every workflow closed its two steps, runs its gate and handed its token over, all
        # under its start message, which stays unacked while the gate runs.

        async def all_handed_over() -> bool:
            return all(await asyncio.gather(*[handed_over(client, i, partitions) for i in ids]))

        await wait_until(all_handed_over, what="every token handed over")
        await wait_until(lambda: gates_running(log) == n, what="every gate running")
        runtime.kill()
        flag.touch()
        await runtime.astart()
        first_tokens = tokens_of(log)
        for i in range(n):
            # The first token still works; its reply comes once the completion is in history,
            # so after the start message's redelivery (earlier in the inbox) was redone.
            await client.complete_activity(first_tokens[f"{i}.h"][0], f"ok-{i}")
        results = await asyncio.gather(*[h.result(timeout=60) for h in handles])
        await wait_until(lambda: work_drained(client), what="work stream drained")
    finally:
        runtime.kill()
    assert results == [chain_expected(i, f"ok-{i}") for i in range(n)]
    for handle in handles:
        assert_applied_once(await handle.history(), handle.id)
    ran = counts(log)
    repeated = {k: v for k, v in ran.items() if k.startswith(("step", "token")) and v != 1}
    assert repeated == {}, f"closed or handed-over activities ran again: {repeated}"
    assert all(ran[f"gate-done {i}.g"] == 1 for i in range(n)), ran
    assert all(ran[f"gate {i}.g"] == 2 for i in range(n)), ran  # killed once, recovered once


async def test_redelivery_to_the_same_runtime_never_runs_an_attempt_twice(
    settings: Settings, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The partition's consumer is recreated while this runtime still holds the lease: the
    start message, unacked while the eager gate runs, comes back to the same cached actor."""
    log = tmp_path / "runs.log"
    log.touch()
    monkeypatch.setenv("PERDURE_TEST_RUN_LOG", str(log))
    close_gate()
    execution_id = "same-runtime"
    partition = partition_of(execution_id, settings.partitions)
    async with Worker([chain, step, gate, hand_over], settings=settings):
        handle = await client.start(chain, 1, id=execution_id)
        await wait_until(lambda: counts(log)["gate 1.g"] == 1, what="the gate running")
        await wait_until(
            lambda: handed_over(client, execution_id, settings.partitions), what="token handed over"
        )
        await recreate_inbox_consumer(client, partition)
        # The completion's reply comes once it is in history: after the start message
        # (earlier in the inbox) was recognised and its steps redone.
        await client.complete_activity(tokens_of(log)["1.h"][0], "ok")
        open_gate()
        assert await handle.result(timeout=30) == chain_expected(1, "ok")
        await wait_until(lambda: work_drained(client), what="work stream drained")
    ran = counts(log)
    assert {k: v for k, v in ran.items() if v != 1} == {}, ran
    assert_applied_once(await handle.history(), execution_id)


async def test_an_attempt_closed_in_the_step_that_started_it_never_runs(
    settings: Settings, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry's back-off ends and the previous attempt's late result arrives in one batch
    (both waited in the inbox while nobody owned the partition): the step starts attempt 2,
    then closes the activity with attempt 1's result. Attempt 2 must not run."""
    log = tmp_path / "runs.log"
    log.touch()
    monkeypatch.setenv("PERDURE_TEST_RUN_LOG", str(log))
    async with watch_history(client) as watch, Worker([answered, late_answer], settings=settings):
        handle = await client.start(answered, 1, id="late")
        await watch.wait_for(
            lambda w: any(isinstance(e, ActivityRetrying) for e in w.events("late")), timeout=10
        )
    token = decode_token(runs(str(log))[0].split()[2])
    # While no runtime runs: the back-off's end, then attempt 1's result, in that order.
    await client.send("late", TimerExpired(run=1, timer="a.1.2.retry"))
    result = msgspec.Raw(codec.encode("from attempt 1"))
    await client.send(
        "late",
        ActivityResult(run=1, seq=1, attempt=1, nonce=token.nonce, ok=True, result=result),
    )
    async with Worker([answered, late_answer], settings=settings):
        assert await handle.result(timeout=10) == "from attempt 1"
        await wait_until(lambda: work_drained(client), what="work stream drained")
    steps = await handle.history_steps()
    assert [d.attempt for s in steps for d in s.decisions if isinstance(d, ActivityScheduled)] == [1, 2]
    assert [line.split()[1] for line in runs(str(log))] == ["1.1"], runs(str(log))
