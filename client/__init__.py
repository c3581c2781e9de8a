"""perdure.client: start executions, await results, complete activity tokens.

Client applications import only this package (and ``perdure.runtime`` through it); the
replay engine in ``perdure.actors`` is never loaded.
"""

from perdure.runtime.errors import (
    ActivityClosed,
    ExecutionNotFound,
    InvalidPayload,
    InvalidToken,
    PayloadTooLarge,
    PerdureError,
    WorkflowCancelled,
    WorkflowFailed,
)

from .client import Client, HeartbeatReply
from .handle import ExecutionDescription, WorkflowHandle

__all__ = [
    "ActivityClosed",
    "Client",
    "ExecutionDescription",
    "ExecutionNotFound",
    "HeartbeatReply",
    "InvalidPayload",
    "InvalidToken",
    "PayloadTooLarge",
    "PerdureError",
    "WorkflowCancelled",
    "WorkflowFailed",
    "WorkflowHandle",
]
