"""Queries: answered from an execution's live state, writing nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from perdure.runtime import codec
from perdure.runtime.errors import ErrorInfo
from perdure.runtime.messages import ApiError, QueryReply

if TYPE_CHECKING:
    from .instance import WorkflowInstance


def answer_query(
    instance: WorkflowInstance | None,
    execution_id: str,
    name: str,
    args: msgspec.Raw,
    *,
    blocked: ErrorInfo | None = None,
) -> QueryReply:
    """Run query handler ``name`` with the JSON arguments ``args`` (a list, one value, or null).
    An execution BLOCKED before its code could run (``blocked``, actors/blocked.py) says why."""
    if instance is None and blocked is not None:
        return _refuse(blocked.code, blocked.message)
    if instance is None:
        return _refuse("execution.not_found", f"no execution {execution_id!r}")
    handler = instance.queries.get(name)
    if handler is None:
        known = ", ".join(sorted(instance.queries)) or "none"
        return _refuse("query.unknown", f"no query {name!r} (known: {known})")
    try:
        decoded = msgspec.json.decode(args)
        value = handler(*(decoded if isinstance(decoded, list) else [] if decoded is None else [decoded]))
        return QueryReply(ok=True, result=msgspec.Raw(codec.encode(value)))
    except Exception as exc:
        return _refuse("query.failed", f"{type(exc).__name__}: {exc}")


def _refuse(code: str, message: str) -> QueryReply:
    return QueryReply(ok=False, error=ApiError(code=code, message=message))
