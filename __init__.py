"""Perdure: durable execution for Python asyncio on NATS JetStream.

    from perdure import workflow, activity, ActivityContext, make_async, sleep, Client

This facade re-exports the public API of ``perdure.actors`` (authoring, runtime) and
``perdure.client`` (services). A service that only starts executions can import
``perdure.client`` alone and never load the replay engine.
"""

from perdure.actors import (
    ActivityContext,
    ActivityGone,
    ActivityHandle,
    ChildHandle,
    HeartbeatStatus,
    Worker,
    WorkflowInfo,
    activity,
    make_async,
    sleep,
    workflow,
)
from perdure.client import Client, ExecutionDescription, WorkflowHandle
from perdure.runtime import (
    ActivityCancelled,
    ActivityClosed,
    ActivityError,
    ActivityTimeout,
    ChildWorkflowError,
    ConfigurationError,
    ConnectionLost,
    EmbeddedServer,
    ExecutionAlreadyExists,
    ExecutionNotFound,
    HeartbeatTimeout,
    InvalidPayload,
    InvalidToken,
    NonDeterminismError,
    PerdureError,
    RemoteError,
    RetryPolicy,
    Settings,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowTerminated,
    WorkflowTimedOut,
)

__version__ = "0.1.0"

__all__ = [
    "ActivityCancelled",
    "ActivityClosed",
    "ActivityContext",
    "ActivityError",
    "ActivityGone",
    "ActivityHandle",
    "ActivityTimeout",
    "ChildHandle",
    "ChildWorkflowError",
    "Client",
    "ConfigurationError",
    "ConnectionLost",
    "EmbeddedServer",
    "ExecutionAlreadyExists",
    "ExecutionDescription",
    "ExecutionNotFound",
    "HeartbeatStatus",
    "HeartbeatTimeout",
    "InvalidPayload",
    "InvalidToken",
    "NonDeterminismError",
    "PerdureError",
    "RemoteError",
    "RetryPolicy",
    "Settings",
    "Worker",
    "WorkflowCancelled",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowInfo",
    "WorkflowTerminated",
    "WorkflowTimedOut",
    "activity",
    "make_async",
    "sleep",
    "workflow",
]
