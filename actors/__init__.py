"""perdure.actors: the authoring API (``@workflow``, ``@activity``) and the actors that run it."""

from .context import ActivityContext, ActivityGone, HeartbeatStatus, make_async
from .definitions import ActivityDefinition, WorkflowDefinition, activity
from .handles import ActivityHandle, ChildHandle
from .registry import Registry
from .worker import Worker
from .workflow_api import WorkflowInfo, sleep, workflow

__all__ = [
    "ActivityContext",
    "ActivityDefinition",
    "ActivityGone",
    "ActivityHandle",
    "ChildHandle",
    "HeartbeatStatus",
    "Registry",
    "Worker",
    "WorkflowDefinition",
    "WorkflowInfo",
    "activity",
    "make_async",
    "sleep",
    "workflow",
]
