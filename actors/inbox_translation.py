"""Inbox message + the execution's current run -> a history input, or a refusal saying why not.

Pure: no I/O, no clock, no mutation. The execution actor calls ``translate`` for each new
message of a step, offers the inputs to the workflow instance, and answers a message that
asked for a reply (``REPLY_HEADER``: token completions) with its refusal, or with
``not_applied`` when the instance declined the input (the activity had closed meanwhile).

Both functions ``match`` over the whole inbox-message union and end in ``assert_never``: a
new message kind that is not handled here is a type error, not a silent refusal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, assert_never

from perdure.runtime.codec import PayloadCodec
from perdure.runtime.errors import ActivityClosed, ExecutionAlreadyExists, InvalidPayload, InvalidToken
from perdure.runtime.events import (
    ActivityCompleted,
    ActivityFailed,
    ActivityProgressed,
    CancelRequested,
    ChildClosed,
    InputEvent,
    SignalReceived,
    TerminateRequested,
    TimerFired,
    WorkflowStarted,
)
from perdure.runtime.messages import (
    ActivityProgress,
    ActivityResult,
    AnyInboxMessage,
    ApiError,
    CancelWorkflow,
    ChildResult,
    SignalWorkflow,
    StartWorkflow,
    TerminateWorkflow,
    TimerExpired,
)
from perdure.runtime.rawjson import NULL

# Internal reports (timer firings, child results) of a run that is over. They never carry a
# reply header, so this code is only logged.
STALE = "message.stale"


class ActivityView(Protocol):
    """What translation reads of an activity (``activity_machine.ActivityState``)."""

    @property
    def name(self) -> str: ...
    @property
    def nonce(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    @property
    def result_codec(self) -> PayloadCodec | None: ...


class RunView(Protocol):
    """What translation reads of the current run (``instance.WorkflowInstance``)."""

    @property
    def run(self) -> int: ...
    @property
    def activities(self) -> Mapping[int, ActivityView]: ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """The message is not taken into history; ``error`` is the answer to its sender."""

    error: ApiError


Translation = InputEvent | Refusal


def translate(
    message: AnyInboxMessage, current: RunView | None, *, execution_id: str, from_outside: bool
) -> Translation:
    """The history input for ``message`` given the ``current`` run (None: no execution yet).

    ``from_outside``: the message came through the API (it asks for a reply), so a result
    it carries is checked against the activity's declared type.
    """
    match message:
        case StartWorkflow():
            if current is None:
                return started_event(message, run=1)
            return _refuse(ExecutionAlreadyExists.code, f"execution {execution_id!r} already exists")
        case ActivityResult():
            return _activity_result(message, current, execution_id=execution_id, from_outside=from_outside)
        case TimerExpired():
            if current is not None and message.run == current.run:
                return TimerFired(timer=message.timer)
            return _refuse(STALE, f"timer {message.timer} of run {message.run} of {execution_id}")
        case CancelWorkflow():
            return CancelRequested(reason=message.reason)
        case TerminateWorkflow():
            return TerminateRequested(reason=message.reason)
        case SignalWorkflow():
            return SignalReceived(name=message.name, payload=message.payload, id=message.id)
        case ChildResult():
            if current is not None and message.run == current.run:
                return ChildClosed(
                    seq=message.seq, status=message.status, result=message.result, error=message.error
                )
            return _refuse(STALE, f"child result for run {message.run} of {execution_id}")
        case ActivityProgress():
            state = current.activities.get(message.seq) if current is not None else None
            if (
                current is not None
                and message.run == current.run
                and state is not None
                and state.nonce == message.nonce
            ):
                return ActivityProgressed(seq=message.seq, attempt=message.attempt, details=message.details)
            return _refuse(STALE, f"progress of activity {message.seq} of {execution_id}")
        case _:
            assert_never(message)


def not_applied(message: AnyInboxMessage, execution_id: str) -> ApiError:
    """The answer when the instance declined the message's input."""
    match message:
        case ActivityResult():
            return ApiError(code=ActivityClosed.code, message=_closed_message(execution_id))
        case StartWorkflow():
            return ApiError(
                code=ExecutionAlreadyExists.code, message=f"execution {execution_id!r} already exists"
            )
        case SignalWorkflow() | CancelWorkflow() | TerminateWorkflow():
            return ApiError(code=STALE, message=f"execution {execution_id!r} is closed or has it already")
        case TimerExpired() | ChildResult() | ActivityProgress():
            return ApiError(
                code=STALE, message=f"{type(message).__name__} no longer applies to {execution_id}"
            )
        case _:
            assert_never(message)


def started_event(message: StartWorkflow, *, run: int) -> WorkflowStarted:
    return WorkflowStarted(
        workflow=message.workflow,
        input=message.input,
        run=run,
        parent=message.parent,
        parent_run=message.parent_run,
        parent_seq=message.parent_seq,
        timeout=message.timeout,
    )


def _activity_result(
    message: ActivityResult, current: RunView | None, *, execution_id: str, from_outside: bool
) -> Translation:
    if current is not None and not 1 <= message.run <= current.run:
        # A run that never was: the token was not handed out by this execution.
        return _refuse(InvalidToken.code, f"token names run {message.run} of {execution_id}, which never ran")
    if current is None or message.run != current.run:
        return _refuse(ActivityClosed.code, "that run of the execution is over")
    state = current.activities.get(message.seq)
    if state is None or state.nonce != message.nonce:
        return _refuse(
            InvalidToken.code,
            f"token does not match activity {message.seq} of {execution_id} (wrong nonce)",
        )
    if state.closed:
        return _refuse(ActivityClosed.code, _closed_message(execution_id))
    if message.ok and from_outside and state.result_codec is not None:
        # A result from outside (a token completion): it must decode as the declared type,
        # or it is refused and the activity stays open for a correct answer.
        try:
            state.result_codec.decode(message.result, what=f"result of activity {state.name!r}")
        except InvalidPayload as exc:
            return _refuse(InvalidPayload.code, exc.message)
    if message.ok:
        return ActivityCompleted(seq=message.seq, attempt=message.attempt, result=message.result or NULL)
    if message.error is None:
        return _refuse(InvalidPayload.code, "a failed activity result carries no error")
    return ActivityFailed(seq=message.seq, attempt=message.attempt, error=message.error)


def _closed_message(execution_id: str) -> str:
    return f"the activity already completed, failed or timed out in {execution_id}; this result was ignored"


def _refuse(code: str, message: str) -> Refusal:
    return Refusal(ApiError(code=code, message=message))
