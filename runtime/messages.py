"""Everything on the wire that is not history: inbox messages, work items, KV values, API bodies.

Inbox messages are orders or reports addressed to one execution; the execution actor turns
the valid ones into history inputs. API bodies are JSON so any language can speak them.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from .errors import ErrorInfo
from .events import ActivityOptions
from .rawjson import NULL

# A header on an inbox message: the core-NATS subject where the execution actor answers
# once the message is absorbed (or refused), so a request (a token completion, a signal)
# is answered only when its outcome is in history.
REPLY_HEADER = "Perdure-Reply"

# Headers of a dead letter on ``<NS>_DEAD`` (actors/dead_letters.py), next to the original
# message's own headers and data: why it is there, and where it came from. A header starting
# with ``Nats-`` is the server's, so the original ``Nats-Msg-Id`` is kept under another name.
DEAD_CODE = "Perdure-Dead-Code"  # the reason's error code: workflow.unknown, payload.invalid, ...
DEAD_REASON = "Perdure-Dead-Reason"  # the reason, one line
DEAD_EXECUTION = "Perdure-Dead-Execution"
DEAD_SUBJECT = "Perdure-Dead-Subject"  # the subject it was stored on
DEAD_STREAM_SEQ = "Perdure-Dead-Stream-Seq"  # its sequence there (history's ``absorbed`` names it)
DEAD_WORKFLOW = "Perdure-Dead-Workflow"  # the execution's workflow, when known
DEAD_MSG_ID = "Perdure-Dead-Msg-Id"  # its original Nats-Msg-Id
DEAD_HEADERS = (
    DEAD_CODE,
    DEAD_REASON,
    DEAD_EXECUTION,
    DEAD_SUBJECT,
    DEAD_STREAM_SEQ,
    DEAD_WORKFLOW,
    DEAD_MSG_ID,
)

# ------------------------------------------------------------------------------- inbox


class InboxMessage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="type"):
    """Base of what arrives on ``<ns>.inbox.<execution>``."""


class StartWorkflow(InboxMessage, frozen=True, tag="start"):
    workflow: str
    input: msgspec.Raw
    parent: str | None = None
    parent_run: int = 0
    parent_seq: int = 0
    timeout: float | None = None
    new_run: bool = False  # start a new run even if the execution exists and is closed (id reuse)


class ActivityResult(InboxMessage, frozen=True, tag="activity.result"):
    """An attempt's outcome: ``result`` if ``ok``, else ``error`` (a timeout is an error too)."""

    run: int
    seq: int
    attempt: int
    nonce: str
    ok: bool
    result: msgspec.Raw = NULL
    error: ErrorInfo | None = None


class TimerExpired(InboxMessage, frozen=True, tag="timer.expired"):
    run: int
    timer: str


class SignalWorkflow(InboxMessage, frozen=True, tag="signal"):
    name: str
    payload: msgspec.Raw
    id: str = ""


class CancelWorkflow(InboxMessage, frozen=True, tag="cancel"):
    reason: str = ""


class TerminateWorkflow(InboxMessage, frozen=True, tag="terminate"):
    reason: str = ""


class ChildResult(InboxMessage, frozen=True, tag="child.result"):
    """A child execution closed; sent to its parent's inbox."""

    run: int
    seq: int
    status: str
    result: msgspec.Raw = NULL
    error: ErrorInfo | None = None


class ActivityProgress(InboxMessage, frozen=True, tag="activity.progress"):
    run: int
    seq: int
    attempt: int
    nonce: str
    details: msgspec.Raw = NULL


AnyInboxMessage = (
    StartWorkflow
    | ActivityResult
    | TimerExpired
    | SignalWorkflow
    | CancelWorkflow
    | TerminateWorkflow
    | ChildResult
    | ActivityProgress
)


# -------------------------------------------------------------------------------- work


class ActivityTask(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One attempt of one activity, published on ``<ns>.work.<activity>``."""

    execution_id: str
    workflow: str
    run: int
    seq: int
    attempt: int
    name: str
    input: msgspec.Raw
    nonce: str
    token: str
    options: ActivityOptions = ActivityOptions()
    checkpoint: msgspec.Raw = NULL
    scheduled_at: float = 0.0


# ----------------------------------------------------------------------------- KV values


class TimerEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Value of a timer key; the key's TTL is the crash-safe backstop, ``fire_at`` the precise time.

    A cancelled timer's key is purged (no tombstone, no marker). ``cancelled`` is written by
    the runtime that starts an attempt, to cancel its schedule-to-start timer without a TTL
    (so no marker) while the owner's watcher disarms it (actors/attempt_timers.py); earlier
    versions re-put every cancelled timer with a short TTL.
    """

    fire_at: float
    cancelled: bool = False


class ActivityRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Value of ``...a.<seq>.<attempt>.hb``: an open attempt. Its TTL is the heartbeat timeout.

    It is stored without a TTL when the attempt is scheduled; the worker's first heartbeat
    arms it, and every heartbeat re-puts it, resetting the TTL. Details (the checkpoint) go
    to the activity's ``...a.<seq>.cp`` key (30-day TTL), so they survive a timeout. When the
    activity closes, the execution actor purges every key of the activity; a late heartbeat
    then finds no record and learns from history that the attempt is closed (or cancelled).
    ``closed`` is only read: records written by earlier versions.
    """

    nonce: str
    heartbeat: float | None = None
    details: msgspec.Raw = NULL
    cancel_requested: bool = False
    closed: bool = False
    observed: bool = False  # the workflow watches progress: heartbeats go to the inbox too
    started: bool = False  # a worker sent the attempt's first heartbeat: the TTL (timer) is armed


Status = Literal["RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TERMINATED", "BLOCKED"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TERMINATED"})


class ExecutionRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The executions index entry: what ``describe()`` shows and ``result()`` waits for."""

    execution_id: str
    workflow: str
    status: Status
    run: int = 1
    started_at: float = 0.0
    closed_at: float | None = None
    result: msgspec.Raw = NULL
    error: ErrorInfo | None = None
    history_length: int = 0


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    owner: str
    acquired_at: float


# ------------------------------------------------------------------- API (JSON, any language)


class CompleteRequest(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    result: msgspec.Raw = msgspec.Raw(b"null")


class RemoteFailure(msgspec.Struct, frozen=True, kw_only=True):
    type: str = "Error"
    message: str = ""
    retryable: bool = True
    traceback: str = ""


class FailRequest(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    error: RemoteFailure


class SignalRequest(msgspec.Struct, frozen=True, kw_only=True):
    execution_id: str
    name: str
    payload: msgspec.Raw = NULL
    id: str = ""


class QueryRequest(msgspec.Struct, frozen=True, kw_only=True):
    execution_id: str
    name: str
    args: msgspec.Raw = NULL  # a JSON list of arguments for the handler


class HeartbeatRequest(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    details: msgspec.Raw = NULL


class ApiError(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    message: str


class ApiReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    ok: bool
    error: ApiError | None = None
    closed: bool = False
    cancel_requested: bool = False


class HeartbeatStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A heartbeat's answer: both flags always spelled out (no ``omit_defaults``), so any
    language reads them; errors are an ``ApiReply``."""

    ok: bool = True
    cancel_requested: bool = False
    closed: bool = False


class QueryReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    ok: bool
    result: msgspec.Raw = NULL
    error: ApiError | None = None
