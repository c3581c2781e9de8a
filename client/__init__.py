"""perdure.client: start executions, await results, complete activity tokens.

Client applications import only this package (and ``perdure.runtime`` through it); the
replay engine in ``perdure.actors`` is never loaded. The client's own modules load lazily
(a module ``__getattr__``, PEP 562), on first use of a name: ``perdure --help`` and the
argument parsing of the CLI (``perdure.client.cli``) then load neither nats-py nor the
connection code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:  # the static view; at run time see __getattr__
    from .client import Client, HeartbeatReply
    from .handle import ExecutionDescription, WorkflowHandle
    from .index_pages import ExecutionPage

_HOME = {
    "Client": ".client",
    "HeartbeatReply": ".client",
    "ExecutionDescription": ".handle",
    "WorkflowHandle": ".handle",
    "ExecutionPage": ".index_pages",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'perdure.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ActivityClosed",
    "Client",
    "ExecutionDescription",
    "ExecutionNotFound",
    "ExecutionPage",
    "HeartbeatReply",
    "InvalidPayload",
    "InvalidToken",
    "PayloadTooLarge",
    "PerdureError",
    "WorkflowCancelled",
    "WorkflowFailed",
    "WorkflowHandle",
]
