"""Perdure: durable execution for Python asyncio on NATS JetStream.

    from perdure import workflow, activity, ActivityContext, make_async, sleep, Client

This facade re-exports the public API of ``perdure.actors`` (authoring, runtime) and
``perdure.client`` (services). It loads lazily (a module ``__getattr__``, PEP 562): a name
is imported from its home module on first use, so ``import perdure.client`` in a service
never loads the replay engine in ``perdure.actors`` (``tests/test_boundaries.py`` checks).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the static view for type checkers and IDEs; at run time see __getattr__
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
        ConnectOptions,
        EmbeddedServer,
        ExecutionAlreadyExists,
        ExecutionNotFound,
        HeartbeatTimeout,
        InvalidPayload,
        InvalidToken,
        NonDeterminismError,
        NotAuthenticated,
        PayloadTooLarge,
        PerdureError,
        PermissionDenied,
        RemoteError,
        RetryPolicy,
        Settings,
        TLSRefused,
        WorkflowCancelled,
        WorkflowFailed,
        WorkflowTerminated,
        WorkflowTimedOut,
    )

_ACTORS = (
    "ActivityContext",
    "ActivityGone",
    "ActivityHandle",
    "ChildHandle",
    "HeartbeatStatus",
    "Worker",
    "WorkflowInfo",
    "activity",
    "make_async",
    "sleep",
    "workflow",
)
_CLIENT = ("Client", "ExecutionDescription", "WorkflowHandle")
_HOME: dict[str, str] = {
    **dict.fromkeys(_ACTORS, "perdure.actors"),
    **dict.fromkeys(_CLIENT, "perdure.client"),
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name, "perdure.runtime" if name in __all__ else None)
    if module is None:
        raise AttributeError(f"module 'perdure' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


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
    "ConnectOptions",
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
    "NotAuthenticated",
    "PayloadTooLarge",
    "PerdureError",
    "PermissionDenied",
    "RemoteError",
    "RetryPolicy",
    "Settings",
    "TLSRefused",
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
