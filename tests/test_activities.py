"""Activities that run for days (issue 3): heartbeats, heartbeat timeouts after a crash,
resuming from a checkpoint on retry, bounded history, and the runnable examples."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from activity_workflows import (
    Counted,
    CountJob,
    after_a_queue,
    batch,
    call_partner,
    counting,
    eager,
    eager_job,
    flaky_batch,
    partner,
    queued,
    steady,
    steady_job,
)

from perdure import Client, EmbeddedServer, Settings, Worker
from perdure.runtime.events import (
    ActivityCompleted,
    ActivityConcluded,
    ActivityRetrying,
    ActivityScheduled,
    HistoryStep,
    TimerFired,
    WorkflowCompleted,
    WorkflowStarted,
)

from support import RuntimeProcess, watch_history


@dataclass
class Beat:
    attempt: int
    details: object
    at: float  # time.time() when the test saw it


@dataclass
class BeatWatch:
    """Every heartbeat of one execution's activity, as the server receives it: the re-put of
    the attempt's record (the timer), then, with details, of the activity's checkpoint key."""

    beats: list[Beat] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, predicate: object, timeout: float = 20.0) -> Beat:
        async with asyncio.timeout(timeout):
            while True:
                found = next((b for b in self.beats if predicate(b)), None)  # type: ignore[operator]
                if found is not None:
                    return found
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def watch_beats(client: Client, execution_id: str, seq: int = 1) -> AsyncIterator[BeatWatch]:
    """A core subscription on the activity's record keys ``...a.<seq>.<attempt>.hb``: each
    heartbeat re-puts the record, so this sees every heartbeat that reached the server."""
    watch = BeatWatch()
    bucket = client.names.timers_bucket
    sub, messages = await client.conn.subscribe(f"$KV.{bucket}.*.{execution_id}.1.a.{seq}.>")
    await client.conn.flush()

    async def pump() -> None:
        async for message in messages:
            if not message.data:
                continue
            if message.subject.endswith(".cp"):  # the details of the heartbeat just seen
                if watch.beats and message.data != b"null":
                    watch.beats[-1].details = msgspec.json.decode(message.data)
                    watch.changed.set()
                continue
            if not message.subject.endswith(".hb"):
                continue
            record = msgspec.json.decode(message.data)
            if record.get("closed") or not record.get("started"):
                continue
            attempt = int(message.subject.split(".")[-2])
            watch.beats.append(Beat(attempt, None, time.time()))
            watch.changed.set()

    task = asyncio.ensure_future(pump())
    try:
        yield watch
    finally:
        task.cancel()
        await sub.stop()


@dataclass(frozen=True)
class KilledCounting:
    """What happened when the runtime running two counting activities was SIGKILLed."""

    job: CountJob
    killed_at: float
    last_beat: Beat  # the last heartbeat of the retried activity that reached the server
    outcome: object  # the workflow without retries
    counted: object  # the workflow with retries
    steps: list[HistoryStep]  # history of the workflow with retries


@pytest.fixture(scope="module")
async def killed_counting(nats_server: EmbeddedServer) -> KilledCounting:
    """Two counting activities (heartbeat 2 s) run in a runtime process, their workflows in
    this one. The runtime is SIGKILLed right after a heartbeat (the worst case for the
    timeout); another runtime is started for the retry."""
    namespace = "t" + uuid.uuid4().hex[:12]
    settings = Settings(url=nats_server.url, namespace=namespace, name=f"rt-{namespace}")
    job = CountJob(n=40, delay=0.1)
    targets = ("activity_workflows:count_to",)
    first = await RuntimeProcess(nats_server.url, namespace, "counter-1", targets=targets).astart()
    second = RuntimeProcess(nats_server.url, namespace, "counter-2", targets=targets)
    client = await Client.connect(nats_server.url, namespace=namespace)
    try:
        async with (
            Worker([counting], settings=settings),
            watch_history(client) as history,
            watch_beats(client, "resumes") as resumes,
            watch_beats(client, "gives-up") as gives_up,
        ):
            resumed = await client.start(counting, msgspec.structs.replace(job, retry=True), id="resumes")
            given_up = await client.start(counting, job, id="gives-up")
            await gives_up.wait_for(lambda b: b.details is not None and b.details > 1)
            await resumes.wait_for(lambda b: b.details is not None and b.details > 1)
            first.kill()
            killed_at = time.time()
            restarted = asyncio.ensure_future(second.astart())
            last_beat = resumes.beats[-1]
            outcome = await given_up.result(timeout=30)
            await restarted
            counted = await resumed.result(timeout=30)
            steps = list(history.steps["resumes"])
        return KilledCounting(job, killed_at, last_beat, outcome, counted, steps)
    finally:
        await client.close()
        first.kill()
        second.kill()


def test_heartbeat_timeout_within_2_plus_1_3_s_of_a_sigkill(killed_counting: KilledCounting) -> None:
    """Without retries the workflow catches HeartbeatTimeout; with retries the history shows
    the heartbeat timer firing and the retry. Both within 2 + 1.3 s of the kill, never early."""
    k = killed_counting
    kind, _, seen_at = str(k.outcome).partition(" at ")
    assert kind == "HeartbeatTimeout", k.outcome
    no_retry_latency = float(seen_at) - k.killed_at
    assert 0 < no_retry_latency <= 2 + 1.3, no_retry_latency

    fired = next(s for s in k.steps if any(isinstance(e, TimerFired) for e in s.inputs))
    assert [e.timer for e in fired.inputs] == ["a.1.1.hb"]
    retrying = next(e for e in fired.decisions if isinstance(e, ActivityRetrying))
    assert retrying.error.code == "activity.heartbeat_timeout"
    assert retrying.error.type == "HeartbeatTimeout"
    retry_latency = fired.time - k.killed_at
    assert 0 < retry_latency <= 2 + 1.3, retry_latency
    assert fired.time - k.last_beat.at >= 2.0 - 0.05  # never early: the TTL is rounded up
    print(f"heartbeat timeout after SIGKILL: {no_retry_latency:.3f}s, {retry_latency:.3f}s")


def test_retry_after_a_crash_finishes_the_job_on_another_runtime(killed_counting: KilledCounting) -> None:
    k = killed_counting
    assert isinstance(k.counted, Counted)
    assert k.counted.attempt == 2
    assert k.counted.total == k.job.n
    attempts = [e.attempt for s in k.steps for e in s.decisions if isinstance(e, ActivityScheduled)]
    assert attempts == [1, 2]
    assert sum(isinstance(e, ActivityCompleted) for s in k.steps for e in s.inputs) == 1


def test_retry_after_a_heartbeat_timeout_resumes_from_the_last_checkpoint(
    killed_counting: KilledCounting,
) -> None:
    k = killed_counting
    assert isinstance(k.counted, Counted)
    assert k.last_beat.attempt == 1 and isinstance(k.last_beat.details, int)
    assert k.counted.began_at == k.last_beat.details, (k.counted, k.last_beat)


async def test_steady_heartbeats_never_time_out_and_add_no_history(
    settings: Settings, client: Client
) -> None:
    """50 heartbeats, one every 0.2 s for 10 s, with a 1 s heartbeat timeout: no timeout, and
    the activity's history is exactly scheduled, completed, closed (heartbeats add nothing)."""
    async with Worker([steady_job, steady], settings=settings), watch_beats(client, "steady") as beats:
        handle = await client.start(steady_job, 50, id="steady")
        assert await handle.result(timeout=30) == 50
        events = await handle.history()
    assert [type(e) for e in events] == [
        WorkflowStarted,
        ActivityScheduled,
        ActivityCompleted,
        ActivityConcluded,
        WorkflowCompleted,
    ]
    sent = [b for b in beats.beats if b.details is not None]
    # Throttled to one per 0.8 x 1 s: about 12 in 10 s, each well within the timeout.
    assert 8 <= len(sent) <= 16, len(sent)
    gaps = [b.at - a.at for a, b in itertools.pairwise(sent)]
    assert max(gaps) < 1.0, gaps
    print(f"steady: {len(sent)} heartbeats reached the server in 10 s, longest gap {max(gaps):.3f}s")
    assert (await handle.describe()).history_length == 5


async def test_a_timeout_error_raised_by_the_activity_is_a_failure(
    settings: Settings, client: Client
) -> None:
    """Only the activity's own deadline is a timeout; a TimeoutError the code raises (a partner's
    timeout) fails the attempt at once instead of leaving the workflow waiting for 30 s."""
    async with Worker([partner, call_partner], settings=settings):
        handle = await client.start(partner, 7)
        result = await handle.result(timeout=10)
    assert result == "ActivityError TimeoutError: partner did not answer request 7"


async def test_a_failing_attempt_hands_its_latest_checkpoint_to_the_retry(
    settings: Settings, client: Client
) -> None:
    """Heartbeats are throttled, but the latest details are never lost: a failing attempt
    sends its pending details before reporting, so the retry starts from them."""
    async with Worker([batch, flaky_batch], settings=settings):
        handle = await client.start(batch, 5)
        assert await handle.result(timeout=10) == [2, 5]


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def run_example(name: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / name), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, (name, out.decode(), err.decode())
    return out.decode()


async def test_the_examples_run() -> None:
    completion, resume = await asyncio.gather(
        run_example("async_completion.py"), run_example("resume_from_checkpoint.py")
    )
    # An outside service (nats-py only) heartbeats, then completes one activity and fails another.
    assert completion.count('heartbeat reply {"ok":true,"cancel_requested":false,"closed":false}') == 2
    assert completion.count('service: answer reply {"ok":true}') == 2, completion
    assert completion.count('second answer reply {"ok":false,"error":{"code":"activity.closed"') == 2
    assert "workflow result: approved 120.00 for alice" in completion
    assert "workflow result: refused 900.00 for bob (PolicyViolation: over the 500.00 limit)" in completion
    # The job breaks at chunk 12 and attempt 2 carries on from there.
    assert "activity attempt 1: checkpoint None, starting at chunk 0" in resume
    assert "activity attempt 1: storage connection lost at chunk 12" in resume
    assert "activity attempt 2: checkpoint 12, starting at chunk 12" in resume
    assert "workflow result: 30 chunks in 2 attempts, attempt 2 resumed from chunk 12" in resume
    assert "history: 9 events, whatever the number of heartbeats" in resume


async def _run_after_waiting_in_the_queue(
    settings: Settings, client: Client, execution_id: str, *, queued_for: float, work: float
) -> str:
    """No runtime hosts the activity until it has waited ``queued_for`` seconds in its queue."""
    async with Worker([queued], settings=settings), watch_history(client) as history:
        handle = await client.start(queued, work, id=execution_id)
        await history.wait_for(
            lambda w: any(isinstance(e, ActivityScheduled) for e in w.events(execution_id))
        )
        await asyncio.sleep(queued_for)  # the scenario: time spent waiting for a worker
        activities = dataclasses.replace(settings, name=f"{settings.name}-activities")
        async with Worker([after_a_queue], settings=activities, host_workflows=False):
            return str(await handle.result(timeout=20))


async def test_the_heartbeat_timeout_counts_from_the_attempts_start(
    settings: Settings, client: Client
) -> None:
    """Queued 0.8 s, then 0.6 s of work before the first heartbeat (timeout 1 s): silent for
    1.4 s since it was scheduled, but only 0.6 s since it started, so it does not time out."""
    result = await _run_after_waiting_in_the_queue(settings, client, "short-queue", queued_for=0.8, work=0.6)
    assert result == "done on attempt 1"


async def test_an_attempt_queued_longer_than_its_heartbeat_timeout_still_runs(
    settings: Settings, client: Client
) -> None:
    result = await _run_after_waiting_in_the_queue(settings, client, "long-queue", queued_for=2.0, work=0.2)
    assert result == "done on attempt 1"


async def test_activities_heartbeating_as_they_start_are_not_told_they_are_gone(
    settings: Settings, client: Client
) -> None:
    """A work item can reach a worker before the attempt's record reaches the timers stream;
    a heartbeat then finds no record, and must not be answered 'closed' (ActivityGone)."""
    ids = [f"eager-{i}" for i in range(60)]
    # Sixty at once, their results awaited with handle.result() (one shared index watch: no
    # update is missed however fast the execution closes after the handle subscribes).
    async with Worker([eager_job, eager], settings=settings):
        handles = [await client.start(eager_job, n, id=execution_id) for n, execution_id in enumerate(ids)]
        results = await asyncio.gather(*(h.result(timeout=20) for h in handles))
    assert results == list(range(60))
