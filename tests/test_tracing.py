"""OpenTelemetry traces (issue 11): the client's start span is the ancestor of every workflow
step span and activity attempt span of its execution, all in one trace, whether the attempts
run eagerly in the owning runtime or are pulled from the work subject by another."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from metrics_workflows import family, flaky, greet, greeting, relay, traced
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from perdure import Client, Settings, Worker


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider (settable once per process), exporting to memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    exporter.shutdown()  # later tests' spans (the provider stays set) are dropped


def of_execution(spans: tuple[ReadableSpan, ...], execution_id: str) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        if (span.attributes or {}).get("perdure.execution_id") == execution_id:
            found.setdefault(span.name, []).append(span)
    return found


def ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[int]:
    chain = []
    while span.parent is not None:
        chain.append(span.parent.span_id)
        parent = by_id.get(span.parent.span_id)
        if parent is None:
            break
        span = parent
    return chain


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "work-items"])
async def test_one_trace_per_execution(
    spans: InMemorySpanExporter, settings: Settings, client: Client, eager: bool
) -> None:
    spans.clear()
    settings = dataclasses.replace(settings, eager_activities=eager, partitions=2)
    async with Worker([traced, greet, flaky], settings=settings) as worker:
        ids = [f"traced-{uuid.uuid4().hex[:8]}" for _ in range(2)]
        handles = [await client.start(traced, "x", id=execution_id) for execution_id in ids]
        for handle in handles:
            assert await handle.result(timeout=30) == "hello x 4"
        await worker.wait_quiet()  # every step's span has ended

    finished = spans.get_finished_spans()
    by_id = {span.context.span_id: span for span in finished}
    trace_ids = set()
    for execution_id in ids:
        named = of_execution(finished, execution_id)
        [start] = named["perdure.start"]
        assert start.kind is SpanKind.CLIENT
        trace_ids.add(start.context.trace_id)
        steps, attempts = named["perdure.step"], named["perdure.activity"]
        # start+schedule greet, greet's outcome, flaky's failure, its back-off timer, its outcome
        assert len(steps) >= 5
        for step in steps:
            assert step.context.trace_id == start.context.trace_id
            assert step.parent is not None and step.parent.span_id == start.context.span_id
        assert sorted(
            (a.attributes["perdure.activity"], a.attributes["perdure.attempt"]) for a in attempts
        ) == [
            ("flaky", 1),
            ("flaky", 2),
            ("greet", 1),
        ]
        step_ids = {step.context.span_id for step in steps}
        for attempt in attempts:
            assert attempt.context.trace_id == start.context.trace_id
            chain = ancestors(attempt, by_id)
            assert chain[0] in step_ids  # scheduled by one of the execution's steps
            assert start.context.span_id in chain
        failed = [a for a in attempts if a.status.status_code is StatusCode.ERROR]
        assert [(a.attributes["perdure.activity"], a.attributes["perdure.attempt"]) for a in failed] == [
            ("flaky", 1)
        ]
    assert len(trace_ids) == 2  # one trace per execution


async def test_children_and_continued_runs_stay_in_the_trace(
    spans: InMemorySpanExporter, settings: Settings, client: Client
) -> None:
    """A child workflow's steps are children of the parent's step that started it; the runs
    after a continue-as-new keep the run's trace (of the start, or of the parent's step)."""
    spans.clear()
    async with Worker([family, greeting, relay, greet], settings=settings) as worker:
        parent = f"family-{uuid.uuid4().hex[:8]}"
        looping = f"relay-{uuid.uuid4().hex[:8]}"
        family_handle = await client.start(family, "ann", id=parent)
        relay_handle = await client.start(relay, 2, id=looping)
        assert await family_handle.result(timeout=30) == "hello ann / hello run 0"
        assert await relay_handle.result(timeout=30) == "hello run 0"
        await worker.wait_quiet()  # every step's span has ended

    finished = spans.get_finished_spans()
    by_id = {span.context.span_id: span for span in finished}

    # Continue-as-new from a client start: the three runs' steps are all children of the start.
    named = of_execution(finished, looping)
    [start] = named["perdure.start"]
    assert len(named["perdure.step"]) >= 4  # 3 runs: each schedules greet, then its result
    for step in named["perdure.step"]:
        assert step.context.trace_id == start.context.trace_id
        assert step.parent is not None and step.parent.span_id == start.context.span_id
    assert len(named["perdure.activity"]) == 3  # one greet per run
    for attempt in named["perdure.activity"]:
        assert attempt.context.trace_id == start.context.trace_id
        assert start.context.span_id in ancestors(attempt, by_id)

    # Children: their steps are children of the parent's steps, continued runs included.
    family_spans = of_execution(finished, parent)
    [start] = family_spans["perdure.start"]
    parent_steps = {step.context.span_id for step in family_spans["perdure.step"]}
    for step in family_spans["perdure.step"]:
        assert step.parent is not None and step.parent.span_id == start.context.span_id
    for child, runs in ((f"{parent}-greeting", 1), (f"{parent}-relay", 2)):
        named = of_execution(finished, child)
        assert "perdure.start" not in named  # started by the runtime, not a client
        assert len(named["perdure.step"]) >= runs + 1
        for step in named["perdure.step"]:
            assert step.context.trace_id == start.context.trace_id, child
            assert step.parent is not None and step.parent.span_id in parent_steps, child
        assert len(named["perdure.activity"]) == runs  # one greet per run
        for attempt in named["perdure.activity"]:
            assert attempt.context.trace_id == start.context.trace_id, child
            assert start.context.span_id in ancestors(attempt, by_id), child


async def test_a_new_run_of_a_reused_id_is_traced_by_its_own_start(
    spans: InMemorySpanExporter, settings: Settings, client: Client
) -> None:
    """A start that reuses a closed execution's id begins run 2: its steps and attempts
    belong to that start's trace, not the first run's, nor to a new root."""
    spans.clear()
    async with Worker([relay, greet], settings=settings) as worker:
        execution_id = f"again-{uuid.uuid4().hex[:8]}"
        handle = await client.start(relay, 0, id=execution_id)
        assert await handle.result(timeout=30) == "hello run 0"
        await client.start(relay, 0, id=execution_id, id_reuse="allow")
        async with asyncio.timeout(30):
            async for d in handle.watch():
                if d.run == 2 and d.status == "COMPLETED":
                    break
        await worker.wait_quiet()

    named = of_execution(spans.get_finished_spans(), execution_id)
    first, second = sorted(named["perdure.start"], key=lambda span: span.start_time or 0)
    assert first.context.trace_id != second.context.trace_id
    later = [s for s in named["perdure.step"] if (s.start_time or 0) > (second.end_time or 0)]
    assert len(later) >= 2  # run 2: its start and greet's schedule, greet's outcome
    for step in later:
        assert step.parent is not None and step.parent.span_id == second.context.span_id
    attempts = sorted(named["perdure.activity"], key=lambda span: span.start_time or 0)
    assert [a.context.trace_id for a in attempts] == [first.context.trace_id, second.context.trace_id]


def test_without_opentelemetry_tracing_is_a_no_op() -> None:
    """With opentelemetry not importable, the shim works and does nothing."""
    code = """
import sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
from perdure.runtime import tracing
from perdure.runtime.events import WorkflowStarted
import msgspec
assert tracing.enabled is False
assert tracing.headers() is None and tracing.headers({"a": "b"}) == {"a": "b"}
with tracing.client_span("perdure.start", "e", "w"), tracing.step_scope():
    tracing.begin_step("e", "")
    with tracing.attempt_span("act", "e", 1, {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}):
        tracing.note_failure("x")
started = WorkflowStarted(workflow="w", input=msgspec.Raw(b"null"))
tp = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
assert tracing.with_trace(started, {"traceparent": tp}).trace == tp  # recorded for tracing runtimes
assert "opentelemetry.trace" not in sys.modules
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
