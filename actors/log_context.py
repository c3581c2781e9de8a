"""The ids each log line of an execution or of an activity attempt carries (issue 11).

``runtime/logs.py`` merges structlog's contextvars into every line, first, so the runtime's
lines and user code's (``structlog.get_logger().info(...)`` in a workflow or an activity)
alike carry ``execution_id`` and ``run``, and an attempt's also ``activity``,
``activity_id`` and ``attempt``, in text and in ``--log-json``.

They are bound in the task that does the work. asyncio gives a new task a copy of its
creator's context: what an execution's drain spawns (its step acks, its eager attempts)
carries the execution's ids, and a task's own bindings end with it. Each binding sets every
key of this module, unbinding those it has no value for, so a task created from another's
context (a drain started by an eager attempt's outcome) carries only its own ids; keys an
application bound itself are left alone. In a task that serves many executions (a query
subscription's, the activity actor's) the context managers bind only for the work's span.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, Concatenate, ParamSpec, TypeVar

import structlog

from perdure.runtime.messages import ActivityTask

P = ParamSpec("P")
T = TypeVar("T")
_UNBOUND = ...  # structlog's merge_contextvars skips a key set to Ellipsis


def _execution(execution_id: str, run: int | None) -> dict[str, Any]:
    return {
        "execution_id": execution_id,
        "run": _UNBOUND if run is None else run,
        "activity": _UNBOUND,
        "activity_id": _UNBOUND,
        "attempt": _UNBOUND,
    }


def _attempt(task: ActivityTask) -> dict[str, Any]:
    return {
        "execution_id": task.execution_id,
        "run": task.run,
        "activity": task.name,
        "activity_id": task.seq,
        "attempt": task.attempt,
    }


# structlog's own variables for these keys (a bind returns tokens that name them), set
# directly on the hot path: ``bind_contextvars(**kw)`` builds a dict and a key name per key
# (measured: 3% of a runtime's CPU per workflow, binding three times per workflow).
_tokens = structlog.contextvars.bind_contextvars(**_execution("", None))
_EXECUTION_ID, _RUN, _ACTIVITY, _ACTIVITY_ID, _ATTEMPT = (token.var for token in _tokens.values())
structlog.contextvars.reset_contextvars(**_tokens)
del _tokens


def bind_execution(execution_id: str, run: int | None = None) -> None:
    """For the rest of the current task, which works for this execution only (its drain,
    its workflow code); ``run`` once known (``bind_run``)."""
    _EXECUTION_ID.set(execution_id)
    _RUN.set(_UNBOUND if run is None else run)
    _ACTIVITY.set(_UNBOUND)
    _ACTIVITY_ID.set(_UNBOUND)
    _ATTEMPT.set(_UNBOUND)


def bind_run(run: int) -> None:
    """The run the execution is at, once its history is loaded or a new run begins."""
    _RUN.set(run)


def execution_context(execution_id: str) -> AbstractContextManager[None]:
    """Around one execution's work in a task shared with others (a query's)."""
    return structlog.contextvars.bound_contextvars(**_execution(execution_id, None))


async def as_attempt(
    task: ActivityTask,
    run: Callable[Concatenate[ActivityTask, P], Awaitable[T]],
    *args: P.args,
    **kw: P.kwargs,
) -> T:
    """``run(task, ...)`` as the body of a task of its own that runs this attempt only (an
    eager one's); called inside, so that a task never spawned leaves no coroutine unawaited."""
    _EXECUTION_ID.set(task.execution_id)
    _RUN.set(task.run)
    _ACTIVITY.set(task.name)
    _ACTIVITY_ID.set(task.seq)
    _ATTEMPT.set(task.attempt)
    return await run(task, *args, **kw)


def attempt_context(task: ActivityTask) -> AbstractContextManager[None]:
    """Around one attempt in a task that goes on afterwards."""
    return structlog.contextvars.bound_contextvars(**_attempt(task))
