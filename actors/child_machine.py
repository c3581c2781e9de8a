"""ChildMachine: child workflows started by a workflow.

A child is an execution of its own (its own id, inbox and history). Starting it is a
recorded decision whose effect publishes its start; when it closes, the child's actor
sends ``ChildResult`` to the parent's inbox, which resolves the parent's await. The
parent's cancellation reaches children still running.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from perdure.runtime.errors import ChildWorkflowError, ErrorInfo, from_info
from perdure.runtime.events import ChildCancelRequested, ChildClosed, ChildStarted

from .effects import CancelChild, StartChild

if TYPE_CHECKING:
    from .decisions import Decisions
    from .replay_loop import ReplayLoop


@dataclass
class ChildState:
    seq: int
    execution_id: str
    workflow: str
    future: asyncio.Future[msgspec.Raw]
    closed: bool = False
    cancel_requested: bool = False


class ChildMachine:
    """The child workflows a workflow instance started, keyed by sequence number."""

    def __init__(self, decisions: Decisions, loop: ReplayLoop, execution_id: str, run: int) -> None:
        self._decisions = decisions
        self._loop = loop
        self._execution_id = execution_id  # the parent's: children are named after it
        self._run = run
        self.children: dict[int, ChildState] = {}

    @property
    def any_open(self) -> bool:
        return any(not state.closed for state in self.children.values())

    def start(self, workflow: str, input: msgspec.Raw, execution_id: str | None) -> ChildState:
        decisions = self._decisions
        decisions.check_payload(input, what=f"input of child workflow {workflow!r}")
        seq = decisions.next_seq("child")
        child_id = execution_id or f"{self._execution_id}-c{seq}"
        decision = decisions.decide(
            ChildStarted(seq=seq, workflow=workflow, execution_id=child_id, input=input)
        )
        state = ChildState(seq, decision.execution_id, workflow, self._loop.create_future())
        self.children[seq] = state
        decisions.effect(StartChild(decision, self._run))
        return state

    def closed(self, event: ChildClosed) -> bool:
        state = self.children.get(event.seq)
        if state is None or state.closed:
            return False
        state.closed = True
        if not state.future.done():
            if event.status == "COMPLETED":
                state.future.set_result(event.result)
            else:
                error = event.error or ErrorInfo(code="workflow.failed", message=event.status.lower())
                cause = from_info(error)
                failure = ChildWorkflowError(
                    f"child workflow {state.workflow!r} ({state.execution_id}) {event.status.lower()}: {error.message}",
                    cause=cause,
                )
                state.future.set_exception(failure)
        return True

    def cancel(self, state: ChildState) -> None:
        if state.closed or state.cancel_requested or self._decisions.closed:
            return
        self._request_cancel(state)

    def cancel_open(self) -> None:
        for state in self.children.values():
            if not state.closed and not state.cancel_requested:
                self._request_cancel(state)

    def _request_cancel(self, state: ChildState) -> None:
        state.cancel_requested = True
        self._decisions.decide(ChildCancelRequested(seq=state.seq))
        self._decisions.effect(CancelChild(state.execution_id))
