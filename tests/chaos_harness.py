"""The chaos run of issue 10, shared by tests/test_chaos.py and bench/soak.py.

N ``order`` workflows (chaos_workflows.py) on 3 ``perdure worker`` processes and a NATS
server of the run's own (a free port, a store that survives its restart). The workflows
are started at a steady rate over ``start_span`` seconds, and the faults are spread over
the same span, so each finds workflows in every phase. A fault is a SIGKILL of a random
runtime, replaced at once by a new process with a new name (as an orchestrator would; the
next fault waits until the replacement holds partitions, so every victim owns executions),
or a restart of the NATS server on the same port and store (graceful: a SIGKILLed server
may lose writes it acknowledged, which is not what this test is about). Then every result
is awaited under one deadline. The runtimes' logs are left in the work folder.

What it measures, from history (with the server's store time of each step) and from the
side-effect log the activities append to: results right or wrong, executions not done by the
deadline, outcomes applied twice, activity runs that started after history already held the
activity's outcome ("repeats"), the same attempt run twice, retried attempts, the completer's
answers, and the time to drain (the last fault to the last result).
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaos_workflows import COMPLETER, LOG_ENV, order, order_expected

from perdure import Client, EmbeddedServer
from perdure.client.handle import WorkflowHandle
from perdure.runtime import codec
from perdure.runtime.embedded import free_port
from perdure.runtime.errors import PerdureError
from perdure.runtime.events import ActivityConcluded, ActivityScheduled, HistoryStep
from perdure.runtime.nats_client import nats_core

from support import RuntimeProcess, assert_applied_once


@dataclass(frozen=True)
class ChaosConfig:
    workflows: int = 200
    kills: int = 4
    nats_restarts: int = 1
    runtimes: int = 3
    seed: int = 10
    deadline: float = 80.0  # seconds for every result, from the last fault
    start_span: float = 15.0  # seconds over which the workflows are started (the faults come within)
    nats_down: float = 1.0  # seconds the NATS server stays down
    fault_gap: float = 1.0  # seconds at least between one fault's end and the next (repeats are told apart)


@dataclass(frozen=True)
class Run:
    """One activity run, as the side-effect log has it."""

    execution: str
    seq: int
    name: str
    attempt: int
    pid: int
    t: float


@dataclass
class ChaosReport:
    config: ChaosConfig
    faults: list[tuple[float, float, str]] = field(default_factory=list)  # (seconds since start, epoch, what)
    wrong: dict[str, Any] = field(default_factory=dict)  # execution -> what it returned or raised
    not_done: list[str] = field(default_factory=list)  # no result by the deadline
    applied_twice: list[str] = field(default_factory=list)  # executions with an outcome applied twice
    still_running: list[str] = field(default_factory=list)  # RUNNING in the index after the drain
    last_events: dict[str, list[str]] = field(default_factory=dict)  # not done: where each one stopped
    inbox_left: int = 0  # inbox messages nobody took
    runs: int = 0  # activity runs in the side-effect log
    repeats: list[tuple[Run, float]] = field(default_factory=list)  # runs after the outcome, its time
    repeats_of_a_run_attempt: int = 0  # of those, runs of an attempt that had already run before
    duplicate_attempts: int = 0  # runs of an attempt beyond its first
    retried_attempts: int = 0  # ActivityScheduled with attempt > 1
    completer: collections.Counter[str] = field(default_factory=collections.Counter)  # final answers
    completer_retried: int = 0  # tokens answered only on a later try (a request timed out first)
    conflicts: int = 0  # history appends that lost a race (runtime logs)
    runtime_of: dict[int, str] = field(default_factory=dict)  # pid -> runtime name
    total: float = 0.0  # first start to last result
    drain: float = 0.0  # last fault over to last result

    def repeats_by_fault(self) -> collections.Counter[str]:
        """Each repeated run counted against the last fault before it started."""
        out: collections.Counter[str] = collections.Counter()
        for run, _ in self.repeats:
            before = [what for _, at, what in self.faults if at <= run.t]
            out[before[-1] if before else "no fault"] += 1
        return out

    def summary(self) -> str:
        c = self.config
        repeats_by_name = collections.Counter(run.name for run, _ in self.repeats)
        lines = [
            f"chaos: {c.workflows} workflows, {c.runtimes} runtimes, {c.kills} SIGKILLs, "
            f"{c.nats_restarts} NATS restart(s), seed {c.seed}",
            "faults: " + ", ".join(f"{what} at {t:.1f}s" for t, _, what in self.faults),
            f"time to drain: {self.drain:.1f}s after the last fault ({self.total:.1f}s in all)",
            f"repeated activity runs (started after the outcome was in history): {len(self.repeats)} "
            f"{dict(repeats_by_name)}",
            f"activity runs: {self.runs}; same attempt run again: {self.duplicate_attempts}; "
            f"retried attempts: {self.retried_attempts}; history conflicts: {self.conflicts}",
            f"completer answers: {dict(self.completer)} ({self.completer_retried} after a retry)",
            f"wrong results: {len(self.wrong)}; not done: {len(self.not_done)}; "
            f"applied twice: {len(self.applied_twice)}; still RUNNING: {len(self.still_running)}; "
            f"inbox messages left: {self.inbox_left}",
        ]
        if self.repeats:
            lines.append(
                f"  repeats by the fault before them: {dict(self.repeats_by_fault())}; "
                f"{self.repeats_of_a_run_attempt} ran an attempt that had run before, "
                f"{len(self.repeats) - self.repeats_of_a_run_attempt} were an attempt's first run"
            )
        for run, closed in self.repeats[:10]:
            lines.append(
                f"  repeat: {run.execution} seq {run.seq} {run.name} attempt {run.attempt} "
                f"on {self.runtime_of.get(run.pid, run.pid)} "
                f"ran {run.t - closed:+.3f}s after its outcome was stored"
            )
        for execution in self.not_done[:10]:
            lines.append(f"  not done: {execution}, last events {self.last_events.get(execution)}")
        if self.still_running:
            lines.append(f"  still RUNNING: {self.still_running[:10]}")
        return "\n".join(lines)


class ChaosRun:
    """One run: ``await ChaosRun(config, workdir).run()`` gives the report."""

    def __init__(self, config: ChaosConfig, workdir: Path) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.workdir = workdir
        self.effects = workdir / "effects.jsonl"
        self.answers = workdir / "completions.jsonl"
        self.store = workdir / "nats"
        self.port = free_port()
        self.namespace = f"chaos{config.seed}"
        self.server = EmbeddedServer(store_dir=self.store, port=self.port)
        self.runtimes: list[RuntimeProcess] = []
        self.retired: list[RuntimeProcess] = []
        self.incarnation = 0
        self.server_up = asyncio.Event()
        self.server_up.set()
        self.report = ChaosReport(config)
        self.t0 = 0.0

    async def run(self) -> ChaosReport:
        self.effects.touch()
        self.answers.touch()
        await asyncio.to_thread(self.server.start)
        completer: asyncio.subprocess.Process | None = None
        client: Client | None = None
        try:
            self.runtimes = list(
                await asyncio.gather(
                    *(self._new_runtime(chr(ord("a") + i)) for i in range(self.config.runtimes))
                )
            )
            await asyncio.gather(*(r.await_line("partition.acquired", timeout=30) for r in self.runtimes))
            client = await Client.connect(self.server.url, namespace=self.namespace)
            completer = await asyncio.create_subprocess_exec(
                sys.executable, "-c", COMPLETER, self.server.url, client.names.api("complete"),
                str(self.effects), str(self.answers),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            await self._drive(client)
            await self._check(client)
        finally:
            if completer is not None and completer.returncode is None:
                completer.kill()
                await completer.wait()
            if client is not None:
                await client.close()
            for runtime in self.runtimes:
                runtime.kill()
            for runtime in self.runtimes + self.retired:
                (self.workdir / f"runtime-{runtime.name}.log").write_text(runtime.output())
            self.report.conflicts = sum(
                r.output().count("execution.conflict") for r in self.runtimes + self.retired
            )
            await asyncio.to_thread(self.server.stop)
        return self.report

    # ------------------------------------------------------------------ the run

    async def _new_runtime(self, slot: str) -> RuntimeProcess:
        self.incarnation += 1
        name = f"{slot}{self.incarnation}"
        runtime = RuntimeProcess(
            self.server.url, self.namespace, name, targets=("chaos_workflows",),
            env={"PERDURE_NAME": name, LOG_ENV: str(self.effects)},
        )  # fmt: skip
        await runtime.astart(timeout=30)
        assert runtime.proc is not None
        self.report.runtime_of[runtime.proc.pid] = name
        return runtime

    async def _drive(self, client: Client) -> None:
        config = self.config
        self.t0 = time.monotonic()
        starts = asyncio.ensure_future(self._start_all(client))
        try:
            await self._faults()
            faults_over = time.monotonic()
            handles = await starts
        finally:
            starts.cancel()
        results = await asyncio.gather(
            *(h.result(timeout=config.deadline) for h in handles), return_exceptions=True
        )
        done = time.monotonic()
        self.report.total, self.report.drain = done - self.t0, done - faults_over
        for i, (handle, result) in enumerate(zip(handles, results, strict=True)):
            if isinstance(result, TimeoutError):
                self.report.not_done.append(handle.id)
            elif result != order_expected(i):
                self.report.wrong[handle.id] = result

    async def _start_all(self, client: Client) -> list[WorkflowHandle]:
        """Start the workflows at a steady rate over ``start_span``, so that every fault finds
        workflows in every phase (activities running, timers pending, tokens out)."""
        config, handles = self.config, []
        for i in range(config.workflows):
            await asyncio.sleep(
                max(0.0, self.t0 + i * config.start_span / config.workflows - time.monotonic())
            )
            handles.append(await self._start(client, i))
        return handles

    async def _start(self, client: Client, i: int) -> WorkflowHandle:
        """``client.start``, retried while the NATS server is down (it is idempotent on the id)."""
        for _ in range(200):
            await self.server_up.wait()
            try:
                return await client.start(order, i, id=f"order-{i}")
            except PerdureError:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"order-{i} could not be started")

    async def _faults(self) -> None:
        """Faults spread over the start span; each kill waits for the previous replacement to
        hold partitions, so that every victim owns executions when it dies."""
        config = self.config
        faults = ["kill"] * config.kills
        for k in range(config.nats_restarts):  # among the kills, never first
            faults.insert(1 + (k + 1) * len(faults) // (config.nats_restarts + 1), "nats")
        last_end = self.t0
        for index, fault in enumerate(faults):
            due = max(
                self.t0 + config.start_span * (index + 1) / (len(faults) + 1), last_end + config.fault_gap
            )
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if fault == "kill":
                await self._kill()
            else:
                await self._restart_nats()
            last_end = time.monotonic()

    async def _kill(self) -> None:
        victim = self.rng.choice(self.runtimes)
        victim.kill()
        self._note(f"SIGKILL {victim.name}")
        self.runtimes.remove(victim)
        self.retired.append(victim)
        replacement = await self._new_runtime(victim.name[0])
        self.runtimes.append(replacement)
        await replacement.await_line("partition.acquired", timeout=30)

    async def _restart_nats(self) -> None:
        self.server_up.clear()
        await asyncio.to_thread(self.server.stop)
        self._note("NATS stopped")
        await asyncio.sleep(self.config.nats_down)  # the outage itself
        self.server = EmbeddedServer(store_dir=self.store, port=self.port)
        await asyncio.to_thread(self.server.start)
        self._note("NATS started")
        self.server_up.set()

    def _note(self, what: str) -> None:
        self.report.faults.append((time.monotonic() - self.t0, time.time(), what))

    # ------------------------------------------------------------------ checks

    async def _check(self, client: Client) -> None:
        report = self.report
        closed_at: dict[tuple[str, int], float] = {}
        for i in range(self.config.workflows):
            execution = f"order-{i}"
            steps = await self._history(client, execution)
            events = [e for _, step in steps for e in (*step.inputs, *step.decisions)]
            if execution in report.not_done:
                report.last_events[execution] = [repr(e) for e in events[-3:]]
            if not _applied_once(events, execution):
                report.applied_twice.append(execution)
            report.retried_attempts += sum(
                1 for e in events if isinstance(e, ActivityScheduled) and e.attempt > 1
            )
            for stored_at, step in steps:
                for event in step.decisions:
                    if isinstance(event, ActivityConcluded):
                        closed_at.setdefault((execution, event.seq), stored_at)
        runs = read_runs(self.effects)
        report.runs = len(runs)
        report.repeats = [
            (run, closed_at[(run.execution, run.seq)])
            for run in runs
            if (run.execution, run.seq) in closed_at and run.t > closed_at[(run.execution, run.seq)]
        ]
        per_attempt = collections.Counter((r.execution, r.seq, r.attempt) for r in runs)
        first_run: dict[tuple[str, int, int], float] = {}
        for run in runs:
            key = (run.execution, run.seq, run.attempt)
            first_run[key] = min(first_run.get(key, run.t), run.t)
        report.repeats_of_a_run_attempt = sum(
            1 for run, _ in report.repeats if first_run[(run.execution, run.seq, run.attempt)] < run.t
        )
        report.duplicate_attempts = sum(n - 1 for n in per_attempt.values())
        answers = [json.loads(line) for line in self.answers.read_text().splitlines()]
        report.completer = collections.Counter(answer["code"] for answer in answers)
        report.completer_retried = sum(1 for answer in answers if len(answer["codes"]) > 1)
        report.still_running = [d.execution_id for d in await client.list_executions(status="RUNNING")]
        report.inbox_left = await self._inbox_left(client)

    async def _history(self, client: Client, execution: str) -> list[tuple[float, HistoryStep]]:
        """Each step with the time the server stored it."""
        names = client.names
        stored = await client.conn.read_subject(names.history_stream, names.history(execution))
        return [(server_time(s.time), codec.history_step.decode(s.data)) for s in stored]

    async def _inbox_left(self, client: Client) -> int:
        """Inbox messages still there after a bounded wait (the last acks may be on their way)."""
        js = nats_core(client.conn).jetstream()
        for _ in range(50):
            left = (await js.stream_info(client.names.inbox_stream)).state.messages
            if not left:
                return 0
            await asyncio.sleep(0.2)
        return int(left)


def _applied_once(events: list[Any], execution: str) -> bool:
    try:
        assert_applied_once(events, execution)
    except AssertionError:
        return False
    return True


def read_runs(path: Path) -> list[Run]:
    runs = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        runs.append(Run(entry["e"], entry["seq"], entry["name"], entry["attempt"], entry["pid"], entry["t"]))
    return runs


def server_time(stamp: str) -> float:
    """``Nats-Time-Stamp`` (RFC 3339, UTC, nanoseconds) as epoch seconds."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return seconds + (float("0." + fraction) if fraction else 0.0)
