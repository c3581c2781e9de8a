"""perdure.runtime: what clients and runtimes share.

Connection to NATS, wire types and codec, errors, naming, provisioning, the embedded
server, settings. Only ``nats_client``, ``nats_consumer`` and ``nats_admin`` import nats-py.
"""

from .connect_options import ConnectOptions
from .embedded import EmbeddedServer
from .errors import (
    ActivityCancelled,
    ActivityClosed,
    ActivityError,
    ActivityTimeout,
    ChildWorkflowError,
    ConfigurationError,
    ConnectionLost,
    ErrorInfo,
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
    TLSRefused,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowTerminated,
    WorkflowTimedOut,
)
from .events import ActivityOptions, RetryPolicy
from .settings import Settings

__all__ = [
    "ActivityCancelled",
    "ActivityClosed",
    "ActivityError",
    "ActivityOptions",
    "ActivityTimeout",
    "ChildWorkflowError",
    "ConfigurationError",
    "ConnectOptions",
    "ConnectionLost",
    "EmbeddedServer",
    "ErrorInfo",
    "ExecutionAlreadyExists",
    "ExecutionNotFound",
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
    "WorkflowCancelled",
    "WorkflowFailed",
    "WorkflowTerminated",
    "WorkflowTimedOut",
]
