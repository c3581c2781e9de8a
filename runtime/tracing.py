"""Tracing: OpenTelemetry spans for starts, workflow steps and activity attempts, when installed.

``pip install perdure[otel]`` (``opentelemetry-api`` and ``-sdk``) and configure a tracer
provider as usual; Perdure then makes

    perdure.start     (client, ``Client.start``)    its context goes in the start's inbox
                      message as a W3C ``traceparent`` NATS header, and is recorded in the
                      run's ``WorkflowStarted`` (``trace``), so every later step finds it,
                      on whichever runtime, after any replay
      perdure.step    (each workflow step, a child of the start's context)
        perdure.activity  (each attempt, a child of the step that scheduled it: the work
                      item carries the step's ``traceparent`` header; an eager attempt
                      inherits the step's context)

so one trace shows a whole execution. A child workflow's start message carries the context of
the parent's step that started it (its steps are that step's children), a run begun by
continue-as-new keeps the trace of the run it continues (``continued``), and a start that
reuses a closed execution's id traces the run it begins. This is the only module that
imports opentelemetry.
Without it every function here is a no-op: ``headers()`` returns its argument, the context
managers do nothing, and nothing else is imported or allocated.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

import msgspec

from .events import WorkflowStarted

TRACEPARENT = "traceparent"

try:
    from opentelemetry import context as _context
    from opentelemetry import trace as _trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the otel extra is not installed: tracing costs nothing
    _trace = None  # type: ignore[assignment]

enabled = _trace is not None

if _trace is not None:
    # A proxy until the application sets a tracer provider, then that provider's tracer.
    _tracer = _trace.get_tracer("perdure")
    _propagator = TraceContextTextMapPropagator()

_real_provider = False  # set once the application has set a tracer provider (it is set once)


def _on() -> bool:
    """Spans are made only once the application has set a real tracer provider: with the
    API alone (or the SDK disabled) every span is a non-recording one, which still costs
    about 30 us per span on the hot path (measured: ~8 spans per 1-activity workflow)."""
    global _real_provider
    if _real_provider:
        return True
    if _trace is None:
        return False
    # The API's global, read directly: get_tracer_provider() reads os.environ on each call
    # until a provider is set (about 10 us, several times a step). Set once, never unset.
    if getattr(_trace, "_TRACER_PROVIDER", _UNKNOWN) is None and not _PROVIDER_FROM_ENV:
        return False
    provider = _trace.get_tracer_provider()
    _real_provider = not isinstance(provider, (_trace.ProxyTracerProvider, _trace.NoOpTracerProvider))
    return _real_provider


_UNKNOWN = object()  # a later opentelemetry without the global: ask get_tracer_provider()
_PROVIDER_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ  # loaded by the first ask


# The span of the step under way, begun once the step knows its execution's trace context.
_step: ContextVar[list[Any] | None] = ContextVar("perdure_step_span", default=None)


def headers(base: dict[str, str] | None = None) -> dict[str, str] | None:
    """``base`` plus the current span's ``traceparent`` (and ``tracestate``), if any."""
    if not _on() or not _trace.get_current_span().get_span_context().is_valid:
        return base
    out = dict(base or {})
    _propagator.inject(out)
    return out


def with_trace(started: WorkflowStarted, message_headers: Mapping[str, str] | None) -> WorkflowStarted:
    """The run's ``WorkflowStarted`` with the start message's trace context recorded (kept
    even where this runtime does not trace, for the runtimes that do)."""
    traceparent = message_headers.get(TRACEPARENT) if message_headers else None
    if not traceparent or started.trace:
        return started
    return msgspec.structs.replace(started, trace=traceparent)


def continued(started: WorkflowStarted, previous: WorkflowStarted) -> WorkflowStarted:
    """The first event of a run begun by continue-as-new: it keeps the trace of the run it
    continues (a client's start, or the parent step of a child), so one trace shows every run."""
    if started.trace or not previous.trace:
        return started
    return msgspec.structs.replace(started, trace=previous.trace)


def _parent(traceparent: str) -> Any:
    return _propagator.extract({TRACEPARENT: traceparent}) if traceparent else None


_NULL: contextlib.AbstractContextManager[None] = contextlib.nullcontext()  # reusable, costs nothing


def client_span(name: str, execution_id: str, workflow: str) -> contextlib.AbstractContextManager[None]:
    """The start (or another client call) as a span; send with ``headers()`` inside it."""
    return _client_span(name, execution_id, workflow) if _on() else _NULL


@contextlib.contextmanager
def _client_span(name: str, execution_id: str, workflow: str) -> Iterator[None]:
    attributes = {"perdure.execution_id": execution_id, "perdure.workflow": workflow}
    with _tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes):
        yield


def step_scope() -> contextlib.AbstractContextManager[None]:
    """Around one step: ``begin_step`` opens its span once the trace context is known (after
    the history is loaded); the span ends, and its context is detached, here."""
    return _step_scope() if _on() else _NULL


@contextlib.contextmanager
def _step_scope() -> Iterator[None]:
    holder: list[Any] = []
    reset = _step.set(holder)
    try:
        yield
    except BaseException as exc:
        if holder:
            holder[0].record_exception(exc)
            holder[0].set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        _step.reset(reset)
        if holder:
            span, token = holder
            _context.detach(token)
            span.end()


def begin_step(execution_id: str, traceparent: str) -> None:
    """Open the step's span as a child of the start's context, current for the rest of the
    step (the workflow code, the append, the effects: work items carry it on)."""
    if not _on():
        return
    holder = _step.get()
    if holder is None or holder:
        return
    span = _tracer.start_span(
        "perdure.step", context=_parent(traceparent), attributes={"perdure.execution_id": execution_id}
    )
    holder[:] = [span, _context.attach(_trace.set_span_in_context(span))]


def begin_new_run(execution_id: str, message_headers: Mapping[str, str] | None) -> str:
    """A start that reuses a closed execution's id: its ``traceparent`` (for the new run's
    ``WorkflowStarted``), the parent of the step span opened now, before the run's first step."""
    traceparent = message_headers.get(TRACEPARENT, "") if message_headers else ""
    begin_step(execution_id, traceparent)
    return traceparent


def attempt_span(
    activity: str, execution_id: str, attempt: int, message_headers: Mapping[str, str] | None
) -> contextlib.AbstractContextManager[None]:
    """One activity attempt: a child of the work item's ``traceparent`` (the step that
    scheduled it), or of the current context (an eager attempt, spawned inside that step)."""
    return _attempt_span(activity, execution_id, attempt, message_headers) if _on() else _NULL


@contextlib.contextmanager
def _attempt_span(
    activity: str, execution_id: str, attempt: int, message_headers: Mapping[str, str] | None
) -> Iterator[None]:
    traceparent = message_headers.get(TRACEPARENT) if message_headers else None
    attributes: dict[str, str | int] = {
        "perdure.activity": activity,
        "perdure.execution_id": execution_id,
        "perdure.attempt": attempt,
    }
    with _tracer.start_as_current_span(
        "perdure.activity", context=_parent(traceparent) if traceparent else None, attributes=attributes
    ):
        yield


def note_failure(message: str) -> None:
    """Mark the current span failed (an attempt that reports a failure raises nothing here)."""
    if _on():
        _trace.get_current_span().set_status(Status(StatusCode.ERROR, message[:200]))


__all__ = [
    "TRACEPARENT",
    "attempt_span",
    "begin_new_run",
    "begin_step",
    "client_span",
    "continued",
    "enabled",
    "headers",
    "note_failure",
    "step_scope",
    "with_trace",
]
