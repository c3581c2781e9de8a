"""The authoring API available to workflow code: ``workflow.now()``, ``random()``, ``uuid4()``, ``info()``.

``workflow`` is both the decorator (``@workflow``) and this namespace, as in the design's
user view. Everything here reads the running workflow instance, so it is deterministic on
replay: time comes from history, randomness from a seeded generator.
"""

from __future__ import annotations

import asyncio
import random as _random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, overload

import structlog

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
    def __call__(self, *, name: str | None = None) -> Callable[[F], WorkflowDefinition[Any, Any]]: ...
    def __call__(self, fn: Any = None, *, name: str | None = None) -> Any:
        return define_workflow(fn, name=name)

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
