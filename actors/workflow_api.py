"""The authoring API available to workflow code: ``workflow.now()``, ``random()``, ``uuid4()``, ``info()``.

``workflow`` is both the decorator (``@workflow``) and this namespace, as in the design's
user view. Everything here reads the running workflow instance, so it is deterministic on
replay: time comes from history, randomness from a seeded generator.
"""

from __future__ import annotations

import asyncio
import random as _random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn, TypeVar, overload

import structlog

from perdure.runtime.codec import PayloadCodec
from perdure.runtime.errors import InvalidPayload

from .definitions import Duration, WorkflowDefinition, define_workflow, seconds
from .replay_loop import require_instance

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class WorkflowInfo:
    execution_id: str
    workflow: str
    run: int
    history_length: int
    history_long: bool


class _Workflow:
    """``@workflow`` decorates; ``workflow.now()`` and friends read the running execution."""

    history_warn_events = 10_000

    @overload
    def __call__(self, fn: F) -> WorkflowDefinition[Any, Any]: ...
    @overload
    def __call__(
        self, *, name: str | None = None, signals: Mapping[str, Any] | None = None
    ) -> Callable[[F], WorkflowDefinition[Any, Any]]: ...
    def __call__(
        self, fn: Any = None, *, name: str | None = None, signals: Mapping[str, Any] | None = None
    ) -> Any:
        """``@workflow``, or ``@workflow(name=..., signals={"approval": bool})`` to declare
        signal types (checked when a signal is sent through a handle that knows the workflow)."""
        return define_workflow(fn, name=name, signals=signals)

    def now(self) -> datetime:
        """The workflow's clock: the time of the step being run (the same on replay)."""
        return datetime.fromtimestamp(require_instance("workflow.now()").loop.now, tz=UTC)

    def time(self) -> float:
        return require_instance("workflow.time()").loop.now

    def random(self) -> _random.Random:
        """A random generator seeded per execution: replays draw the same numbers."""
        return require_instance("workflow.random()").random

    def uuid4(self) -> uuid.UUID:
        return require_instance("workflow.uuid4()").uuid4()

    def info(self) -> WorkflowInfo:
        instance = require_instance("workflow.info()")
        return WorkflowInfo(
            execution_id=instance.execution_id,
            workflow=instance.definition.name,
            run=instance.run,
            history_length=instance.history_length,
            history_long=instance.history_length >= self.history_warn_events,
        )

    def is_replaying(self) -> bool:
        return require_instance("workflow.is_replaying()").replaying

    async def wait_signal(
        self,
        name: str,
        *,
        timeout: Duration | None = None,
        type: Any = None,
        on_invalid: Literal["skip", "raise"] = "skip",
    ) -> Any:
        """The next signal ``name``, decoded as ``type`` (default: the type declared with
        ``@workflow(signals=...)``, else any JSON). Signals sent before the workflow waits are
        kept, in order. Raises ``TimeoutError`` after ``timeout`` (a durable timer).

        A signal whose payload does not decode stays in history but never fails the
        execution: it is skipped with a warning (``workflow.signal_invalid``) and the wait
        goes on, or, with ``on_invalid="raise"``, ``InvalidPayload`` is raised here for the
        workflow to handle (the signal is consumed either way).
        """
        instance = require_instance("workflow.wait_signal()")
        declared = instance.definition.signal_codecs.get(name)
        signal_codec = declared if type is None and declared is not None else PayloadCodec(type or Any)
        remaining = seconds(timeout)
        deadline = None if remaining is None else instance.loop.now + remaining
        while True:
            waiting = instance.signals.wait(name)
            raw = await (asyncio.wait_for(waiting, remaining) if remaining is not None else waiting)
            try:
                return signal_codec.decode(raw, what=f"signal {name!r}")
            except InvalidPayload as exc:
                if on_invalid == "raise":
                    raise
                self.logger.warning("workflow.signal_invalid", signal=name, error=exc.message)
                if deadline is not None:  # the same deadline for the next one
                    remaining = max(0.0, deadline - instance.loop.now)

    def pending_signals(self, name: str) -> int:
        return require_instance("workflow.pending_signals()").signals.pending(name)

    async def condition(self, predicate: Callable[[], bool], *, timeout: Duration | None = None) -> bool:
        """Wait until ``predicate()`` is true (re-checked after every event); False on timeout."""
        instance = require_instance("workflow.condition()")
        if timeout is None:
            return await instance.conditions.wait(predicate)
        try:
            return await asyncio.wait_for(instance.conditions.wait(predicate), seconds(timeout))
        except TimeoutError:
            return False

    def continue_as_new(self, input: Any = None) -> NoReturn:
        """End this run and start the next one with ``input``: a fresh, short history."""
        instance = require_instance("workflow.continue_as_new()")
        raw = instance.definition.input_codec.check(
            input, what=f"input of workflow {instance.definition.name!r}"
        )
        raise instance.continue_as_new(raw)

    def patched(self, patch: str) -> bool:
        """True where new code should run: always for new executions; for executions whose
        history was recorded before the patch, False at the points they had already passed."""
        return require_instance("workflow.patched()").patched(patch)

    def query(self, name: str) -> Callable[[F], F]:
        """Register a query handler from workflow code: ``@workflow.query("status")`` on a
        function reading the workflow's state. Queries are answered by the owning runtime
        from live state and never write history; a handler must not change state or await."""
        instance = require_instance("workflow.query()")

        def register(handler: F) -> F:
            instance.queries[name] = handler
            return handler

        return register

    def start_child(
        self, child: WorkflowDefinition[Any, Any], input: Any = None, *, id: str | None = None
    ) -> Any:
        """Start ``child`` with its own execution id; await the returned handle for its result."""
        return child(input, id=id)

    @property
    def logger(self) -> Any:
        """A structlog logger bound to the execution that stays quiet while replaying."""
        instance = require_instance("workflow.logger")
        if instance.replaying:
            return _Quiet()
        return structlog.get_logger("perdure.workflow").bind(
            execution_id=instance.execution_id, workflow=instance.definition.name
        )


class _Quiet:
    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *a, **k: None


workflow = _Workflow()


async def sleep(duration: Duration) -> None:
    """A durable timer: the workflow resumes after ``duration`` even across crashes and restarts."""
    require_instance("sleep()")
    await asyncio.sleep(seconds(duration) or 0.0)
