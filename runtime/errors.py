"""Perdure's errors, one hierarchy with stable codes.

    PerdureError                         code
    ├── ConfigurationError               "config.invalid"
    │   ├── NotAuthenticated             "nats.auth_refused"
    │   └── TLSRefused                   "nats.tls_refused"
    ├── ConnectionLost                   "nats.unavailable"
    │   └── Unavailable                  "unavailable"  (retryable: nothing answered, e.g. a restart)
    ├── PermissionDenied                 "nats.permission_denied"
    ├── InvalidPayload                   "payload.invalid"
    │   └── PayloadTooLarge              "payload.too_large"
    ├── PayloadUnreadable                "payload.unreadable" (an offloaded or sealed payload cannot be read back)
    │   ├── PayloadKeyMissing            "payload.key_missing"   (encrypted with a key id not configured here)
    │   └── PayloadDecryptFailed         "payload.decrypt_failed" (the key of that id does not open it)
    ├── InvalidToken                     "token.invalid"
    ├── ExecutionNotFound                "execution.not_found"
    ├── ExecutionAlreadyExists           "execution.exists"
    ├── ActivityClosed                   "activity.closed"
    ├── NonDeterminismError              "workflow.nondeterministic"
    ├── UnknownWorkflow                  "workflow.unknown"   (no runtime here hosts it: BLOCKED)
    ├── HistoryUnreadable                "history.invalid"    (a stored step does not decode: BLOCKED)
    ├── StepCrashed                      "step.crashed"       (a step kept crashing: BLOCKED)
    ├── ExecutionBlocked                 "execution.blocked"  (internal: carries the reason's code)
    ├── StepBudgetExceeded               "workflow.step_budget"
    ├── WorkflowFailed                   "workflow.failed"
    │   ├── WorkflowCancelled            "workflow.cancelled"
    │   ├── WorkflowTerminated           "workflow.terminated"
    │   ├── WorkflowTimedOut             "workflow.timeout"
    │   └── ChildWorkflowError           "workflow.child_failed"
    ├── ActivityError                    "activity.failed"
    │   ├── ActivityTimeout              "activity.timeout"
    │   ├── HeartbeatTimeout             "activity.heartbeat_timeout"
    │   └── ActivityCancelled            "activity.cancelled"
    ├── RemoteError                      (any code this version does not know)
    ├── HistoryConflict                  "history.conflict"  (internal: another owner appended)
    └── ScopeClosed                      "runtime.scope_closed"  (internal: a task scope is stopping)

Every class has a stable ``code``; errors cross the wire as ``ErrorInfo`` and come
back as the class with that code, so peers of other versions still interoperate
(an unknown code decodes to ``RemoteError`` with the code kept).
"""

from __future__ import annotations

import traceback as _traceback
from typing import Any, ClassVar

import msgspec

from .rawjson import NULL


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An error as it travels on the wire and sits in history."""

    code: str
    message: str
    type: str = ""
    retryable: bool = True
    traceback: str = ""
    details: msgspec.Raw = NULL


class PerdureError(Exception):
    """Root of every error Perdure raises."""

    code: ClassVar[str] = "perdure.error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str = "", *, type: str = "", traceback: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.type = type or self.__class__.__name__
        self.remote_traceback = traceback

    def to_info(self) -> ErrorInfo:
        return ErrorInfo(
            code=self.code,
            message=self.message,
            type=self.type,
            retryable=self.retryable,
            traceback=self.remote_traceback,
        )


class ConfigurationError(PerdureError):
    code = "config.invalid"


class NotAuthenticated(ConfigurationError):
    """NATS refused the login: wrong or revoked user, password, token, NKey or credentials."""

    code = "nats.auth_refused"


class TLSRefused(ConfigurationError):
    """The TLS handshake failed: an untrusted or misnamed server certificate, a client
    certificate the server rejects, or TLS on one side only."""

    code = "nats.tls_refused"


class ConnectionLost(PerdureError):
    code = "nats.unavailable"
    retryable = True


class Unavailable(ConnectionLost):
    """NATS is reachable but nothing took the message: no JetStream stream stored it (HTTP-like
    status 503) or no runtime serves the request. Transient right after a server restart,
    during a leader election or while runtimes (re)start; lasting if the namespace is not
    provisioned or no runtime runs. Nothing was stored or applied, so sending again is safe;
    the Python client does so for its request timeout before raising this."""

    code = "unavailable"
    retryable = True


class PermissionDenied(PerdureError):
    """The NATS user lacks a permission this operation needs (a publish or a subscription
    its account or permissions do not allow); the message names the subject."""

    code = "nats.permission_denied"


class InvalidPayload(PerdureError):
    code = "payload.invalid"


class PayloadTooLarge(InvalidPayload):
    """A payload (input, result, signal, checkpoint, request body) does not fit in one NATS
    message once its envelope and headers are counted; ``size`` and ``limit`` are in bytes."""

    code = "payload.too_large"

    def __init__(self, message: str = "", *, size: int = 0, limit: int = 0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.size = size
        self.limit = limit


class PayloadUnreadable(PerdureError):
    """A sealed payload (runtime/payload_seal.py) cannot be read back: its object is gone
    (purged, expired) or corrupt, or it is encrypted and cannot be decrypted here."""

    code = "payload.unreadable"


class PayloadKeyMissing(PayloadUnreadable):
    """The payload is encrypted with a key id that is not configured (``PERDURE_PAYLOAD_KEYS``)."""

    code = "payload.key_missing"


class PayloadDecryptFailed(PayloadUnreadable):
    """The configured key of the payload's key id does not decrypt it (a wrong key, or tampering)."""

    code = "payload.decrypt_failed"


class InvalidToken(PerdureError):
    code = "token.invalid"


class ExecutionNotFound(PerdureError):
    code = "execution.not_found"


class ExecutionAlreadyExists(PerdureError):
    code = "execution.exists"


class ActivityClosed(PerdureError):
    code = "activity.closed"


class NonDeterminismError(PerdureError):
    code = "workflow.nondeterministic"


class UnknownWorkflow(PerdureError):
    """A start names a workflow this runtime does not host; the execution is BLOCKED (its
    messages parked in ``<NS>_DEAD``) until a runtime that hosts it takes its partition."""

    code = "workflow.unknown"


class HistoryUnreadable(PerdureError):
    """A step stored on the execution's history subject does not decode (or the history does
    not begin with ``workflow.started``): the execution is BLOCKED, never retried in a loop."""

    code = "history.invalid"


class StepCrashed(PerdureError):
    """The execution's step raised again and again: on several deliveries of one message, or
    on several steps in a row in one runtime (eager outcomes are never redelivered by NATS)."""

    code = "step.crashed"


class ExecutionBlocked(PerdureError):
    """The execution is BLOCKED; ``info`` is the reason (its code is the reason's code)."""

    code = "execution.blocked"

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message, type=info.type)
        self.info = info

    def to_info(self) -> ErrorInfo:
        return self.info


class StepBudgetExceeded(PerdureError):
    """Workflow code ran past the step budget without yielding (``time.sleep``, a busy
    loop, blocking I/O); the message names the workflow, the execution and the line."""

    code = "workflow.step_budget"


class WorkflowFailed(PerdureError):
    """The execution ended in failure; ``cause`` is the error the workflow raised."""

    code = "workflow.failed"

    def __init__(self, message: str = "", *, cause: PerdureError | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.cause = cause


class WorkflowCancelled(WorkflowFailed):
    code = "workflow.cancelled"


class WorkflowTerminated(WorkflowFailed):
    code = "workflow.terminated"


class WorkflowTimedOut(WorkflowFailed):
    code = "workflow.timeout"


class ChildWorkflowError(WorkflowFailed):
    """A child execution failed, was cancelled or terminated; ``cause`` says how."""

    code = "workflow.child_failed"


class ActivityError(PerdureError):
    """An activity failed; ``type``, ``message`` and ``remote_traceback`` come from the worker."""

    code = "activity.failed"
    retryable = True
    cause: PerdureError | None = None  # the recorded error, when its code is not an activity one


class ActivityTimeout(ActivityError):
    code = "activity.timeout"


class HeartbeatTimeout(ActivityTimeout):
    code = "activity.heartbeat_timeout"


class ActivityCancelled(ActivityError):
    code = "activity.cancelled"
    retryable = False


class HistoryConflict(PerdureError):
    code = "history.conflict"
    retryable = True
    history_written = True  # another owner wrote; False: the step is only to be run again


class ScopeClosed(PerdureError):
    """A task was spawned on a ``Supervisor`` scope that is stopping or stopped: what it would
    have done is left to whoever comes next (a message stays unacked and is redelivered)."""

    code = "runtime.scope_closed"


class RemoteError(PerdureError):
    """An error whose code this version does not know; the code is kept."""

    def __init__(self, message: str = "", *, code: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.code = code  # type: ignore[misc]


_BY_CODE: dict[str, type[PerdureError]] = {
    cls.code: cls
    for cls in (
        ConfigurationError,
        NotAuthenticated,
        TLSRefused,
        ConnectionLost,
        Unavailable,
        PermissionDenied,
        InvalidPayload,
        PayloadTooLarge,
        PayloadUnreadable,
        PayloadKeyMissing,
        PayloadDecryptFailed,
        InvalidToken,
        ExecutionNotFound,
        ExecutionAlreadyExists,
        ActivityClosed,
        NonDeterminismError,
        UnknownWorkflow,
        HistoryUnreadable,
        StepCrashed,
        StepBudgetExceeded,
        WorkflowFailed,
        WorkflowCancelled,
        WorkflowTerminated,
        WorkflowTimedOut,
        ChildWorkflowError,
        ActivityError,
        ActivityTimeout,
        HeartbeatTimeout,
        ActivityCancelled,
        HistoryConflict,
        ScopeClosed,
    )
}


def from_info(info: ErrorInfo) -> PerdureError:
    """Turn an ``ErrorInfo`` back into the matching exception class."""
    cls = _BY_CODE.get(info.code)
    if cls is None:
        return RemoteError(info.message, code=info.code, type=info.type, traceback=info.traceback)
    return cls(info.message, type=info.type, traceback=info.traceback)


def activity_failure(info: ErrorInfo) -> PerdureError:
    """How a recorded activity failure reaches the workflow: always an ``ActivityError`` (or
    a subclass), as the README promises. A failure recorded under another code (the
    activity raised ``InvalidPayload``, its result was ``payload.too_large``) keeps its
    ``type`` and message, and the matching error as ``cause``."""
    exc = from_info(info)
    if isinstance(exc, ActivityError):
        return exc
    wrapped = ActivityError(info.message, type=info.type, traceback=info.traceback)
    wrapped.cause = exc
    return wrapped


def info_from_exception(exc: BaseException, *, code: str | None = None) -> ErrorInfo:
    """Describe any exception raised by user code (activity or workflow) for the wire."""
    if isinstance(exc, PerdureError):
        info = exc.to_info()
        if not info.traceback:
            info = msgspec.structs.replace(info, traceback=_format_traceback(exc))
        return info
    return ErrorInfo(
        code=code or ActivityError.code,
        message=str(exc),
        type=type(exc).__qualname__,
        retryable=True,
        traceback=_format_traceback(exc),
    )


def _format_traceback(exc: BaseException) -> str:
    return "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))[-8000:]
