"""``/metrics`` on the health port (issue 11): a ``perdure worker`` process runs a workload,
the test scrapes its Prometheus endpoint over HTTP and checks the counts."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable

import msgspec
import pytest
from metrics_workflows import greet, greeting, relay
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from perdure import Client, EmbeddedServer, Settings, Worker, sleep, workflow
from perdure.actors.history_log import HistoryLog
from perdure.actors.metrics import RuntimeMetrics
from perdure.runtime.embedded import free_port
from perdure.runtime.errors import HistoryConflict
from perdure.runtime.events import ActivityConcluded, HistoryStep, WorkflowStarted

from support import RuntimeProcess, watch_history

N = 5  # greetings, one completed attempt each
PARTITIONS = 4


class Scrape:
    """One scrape's samples, by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def value(self, name: str, **labels: str) -> float:
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        assert len(found) <= 1, (name, labels)
        return found[0] if found else 0.0

    def series(self, name: str) -> dict[str, float]:
        return {s.labels.get("partition", ""): s.value for s in self.samples if s.name == name}


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return Scrape(response.read().decode())


def status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def scrape_until(port: int, condition: Callable[[Scrape], bool], timeout: float = 30.0) -> Scrape:
    """Scrape until ``condition`` holds: the runtime is another process, its metrics are
    what the test can observe."""
    deadline = time.monotonic() + timeout
    while True:
        current = await asyncio.to_thread(scrape, port)
        if condition(current):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"condition never held; last scrape:\n{current.text}")
        await asyncio.sleep(0.1)


async def test_metrics_count_a_workload(nats_server: EmbeddedServer, namespace: str) -> None:
    port = free_port()
    runtime = RuntimeProcess(
        nats_server.url,
        namespace,
        f"rt-{namespace}",
        targets=("metrics_workflows",),
        extra_args=("--health-port", str(port), "--partitions", str(PARTITIONS)),
    )
    await runtime.astart()
    client = await Client.connect(nats_server.url, namespace=namespace)
    try:
        before = await asyncio.to_thread(scrape, port)
        assert before.value("perdure_partitions_owned") == PARTITIONS
        assert before.value("perdure_steps_total") == 0

        # A work item that is not one: terminated, counted as dead-lettered.
        await client.conn.publish(client.names.work("greet"), b"not a work item")

        greetings = [
            await client.start("greeting", f"n{i}", id=f"g{i}-{uuid.uuid4().hex[:6]}") for i in range(N)
        ]
        patient = await client.start("patient", 21, id=f"p-{uuid.uuid4().hex[:6]}")
        results = await asyncio.gather(*(h.result(timeout=30) for h in greetings))
        assert sorted(results) == sorted(f"hello n{i}" for i in range(N))

        # The patient execution waits for its signal with nothing due: it leaves the cache,
        # so the signal replays its history.
        await scrape_until(
            port,
            lambda s: (
                s.value("perdure_activity_attempts_total", activity="flaky", outcome="completed") == 1
                and s.value("perdure_executions_cached") == 0
            ),
        )
        await patient.signal("go", 0)
        assert await patient.result(timeout=30) == 42

        # A start of a workflow nobody hosts: BLOCKED, its start and a signal parked.
        nobody = await client.start("nobody", 1, id=f"nobody-{uuid.uuid4().hex[:6]}")
        await blocked(client, nobody.id)
        await nobody.signal("poke", 1)
        parked = await scrape_until(port, lambda s: s.value("perdure_parked_messages") == 2)
        assert parked.value("perdure_parked_executions") == 1
        assert parked.value("perdure_executions_blocked_total", code="workflow.unknown") == 1
        assert parked.value("perdure_messages_parked_total", code="workflow.unknown") == 2
        await nobody.terminate("never deployed")  # ends it: its parked messages are dropped
        await scrape_until(
            port,
            lambda s: s.value("perdure_parked_messages") == 0 and s.value("perdure_parked_executions") == 0,
        )

        # Last (its actor, with no execution to load, stays cached): an inbox message that is not one.
        await client.conn.publish(client.names.inbox("junk"), b"not an inbox message")

        final = await scrape_until(
            port,
            lambda s: (
                s.value("perdure_dead_letters_total", reason="bad_work_item") == 1
                and s.value("perdure_dead_letters_total", reason="bad_inbox_message") == 1
            ),
        )
    finally:
        await client.close()
        await runtime.aterminate()

    attempts = {
        (s.labels["activity"], s.labels["outcome"]): s.value
        for s in final.samples
        if s.name == "perdure_activity_attempts_total"
    }
    assert attempts == {("greet", "completed"): N, ("flaky", "failed"): 1, ("flaky", "completed"): 1}
    assert final.value("perdure_activity_attempt_seconds_count", activity="greet") == N
    assert final.value("perdure_activity_attempt_seconds_count", activity="flaky") == 2
    assert final.value("perdure_activity_heartbeats_total") >= N  # greet's first heartbeat, at least

    # Each greeting: start, outcome (2 steps); patient: start, timer, failure, back-off, outcome, signal.
    steps = final.value("perdure_steps_total")
    assert steps >= 2 * N + 6
    assert final.value("perdure_step_seconds_count") == steps
    assert final.value("perdure_step_seconds_sum") > 0
    assert final.value("perdure_history_appends_total") >= 2 * N + 6
    assert final.value("perdure_history_conflicts_total") == 0  # one runtime: nobody else writes

    assert final.value("perdure_replays_total") >= 1  # the signal woke a dormant execution
    assert final.value("perdure_replay_seconds_count") == final.value("perdure_replays_total")

    # The 0.2 s sleep and the 0.1 s back-off, fired from memory on time (the markers are quiet).
    assert final.value("perdure_timers_fired_total", path="memory") >= 2
    lateness = final.value("perdure_timer_lateness_seconds_count")
    assert lateness >= 2
    assert final.value("perdure_timer_lateness_seconds_bucket", le="+Inf") == lateness

    assert final.value("perdure_partitions_owned") == PARTITIONS
    backlog = final.series("perdure_inbox_backlog")
    assert backlog == {str(p): 0.0 for p in range(PARTITIONS)}
    assert final.value("perdure_dead_letters_total", reason="bad_work_item") == 1
    assert final.value("perdure_dead_letters_total", reason="bad_inbox_message") == 1


async def blocked(client: Client, execution_id: str) -> None:
    """Until the index shows the execution BLOCKED (watched, not polled)."""
    async with asyncio.timeout(20):
        async for description in client.get_handle(execution_id).watch():
            if description.status == "BLOCKED":
                return


async def metrics_until(worker: Worker, condition: Callable[[Scrape], bool], timeout: float = 20.0) -> Scrape:
    """Scrape an in-process worker until ``condition`` holds (its parking is not awaited by
    the test: the index says BLOCKED before the messages are parked)."""
    deadline = time.monotonic() + timeout
    while True:
        current = Scrape((await worker.scrape_metrics()).decode())
        if condition(current):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"condition never held; last scrape:\n{current.text}")
        await asyncio.sleep(0.05)


@workflow(name="drifting")
async def drifting_v1(name: str) -> str:
    greeted = await greet(name)
    return greeted + await workflow.wait_signal("go", type=str)


@workflow(name="drifting")
async def drifting_v2(name: str) -> str:
    await sleep(1)  # another first command than the recorded one
    return name


async def test_parked_executions_show_in_metrics(settings: Settings, client: Client) -> None:
    """A runtime counts the executions it marks BLOCKED and the messages it parks, shows the
    parked ones of its partitions, and one that can run them counts them resumed."""
    async with Worker([relay, greet], settings=settings) as without:  # does not host ``greeting``
        handle = await client.start("greeting", "x", id="unhosted-1")
        await blocked(client, "unhosted-1")
        await handle.signal("poke", 1)
        scraped = await metrics_until(without, lambda s: s.value("perdure_parked_messages") == 2)
        assert scraped.value("perdure_parked_executions") == 1
        assert scraped.value("perdure_executions_blocked_total", code="workflow.unknown") == 1
        assert scraped.value("perdure_messages_parked_total", code="workflow.unknown") == 2
        assert scraped.value("perdure_executions_resumed_total") == 0
    async with Worker([greeting, greet], settings=settings) as hosting:
        assert await handle.result(timeout=20) == "hello x"
        scraped = await metrics_until(hosting, lambda s: s.value("perdure_executions_resumed_total") == 1)
        assert scraped.value("perdure_parked_executions") == 0
        assert scraped.value("perdure_parked_messages") == 0

    # Code that no longer replays its history: BLOCKED by the replay, the signal parked.
    async with Worker([drifting_v1, greet], settings=settings), watch_history(client) as history:
        handle = await client.start(drifting_v1, "y", id="drifting-1")
        await history.wait_for(
            lambda w: any(isinstance(e, ActivityConcluded) for e in w.events("drifting-1")), timeout=20
        )
    async with Worker([drifting_v2, greet], settings=settings) as drifted:
        await handle.signal("go", "!")
        await blocked(client, "drifting-1")
        scraped = await metrics_until(drifted, lambda s: s.value("perdure_parked_messages") == 1)
        assert scraped.value("perdure_executions_blocked_total", code="workflow.nondeterministic") == 1
        assert scraped.value("perdure_messages_parked_total", code="workflow.nondeterministic") == 1
        assert scraped.value("perdure_parked_executions") == 1


async def test_health_endpoints_unchanged(nats_server: EmbeddedServer, namespace: str) -> None:
    """``/healthz`` and ``/readyz`` answer as before; unknown paths are still 503."""
    port = free_port()
    runtime = RuntimeProcess(
        nats_server.url,
        namespace,
        f"rt-{namespace}",
        targets=("metrics_workflows",),
        extra_args=("--health-port", str(port), "--partitions", "2"),
    )
    await runtime.astart()
    try:
        assert await asyncio.to_thread(status, port, "/healthz") == 200
        assert await asyncio.to_thread(status, port, "/readyz") == 200
        assert await asyncio.to_thread(status, port, "/nothing") == 503
    finally:
        await runtime.aterminate()


async def test_history_counts_appends_and_conflicts(settings: Settings) -> None:
    """An append refused by optimistic concurrency counts as a conflict, not an append."""
    metrics = RuntimeMetrics()
    async with Worker([greeting, greet], settings=settings) as worker:
        history = HistoryLog(worker.services.conn, settings.names, "conflicted", metrics)
        started = WorkflowStarted(workflow="greeting", input=msgspec.Raw(b'"x"'))
        await history.append(HistoryStep(time=1.0, inputs=[started]))
        history.reset()  # as if another owner had written meanwhile: expects an empty subject
        with pytest.raises(HistoryConflict):
            await history.append(HistoryStep(time=2.0, inputs=[started]))
    exposition = Scrape(generate_latest(metrics.registry).decode())
    assert exposition.value("perdure_history_appends_total") == 1
    assert exposition.value("perdure_history_conflicts_total") == 1
