"""ChildMachine: child workflows started by a workflow.

A child is an execution of its own (its own id, inbox and history). Starting it is a
recorded decision whose effect publishes its start; when it closes, the child's actor
sends ``ChildResult`` to the parent's inbox, which resolves the parent's await. The
parent's cancellation reaches children still running.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import msgspec

from perdure.runtime.errors import ChildWorkflowError, ErrorInfo, from_info
from perdure.runtime.events import ChildCancelRequested, ChildClosed, ChildStarted

from .effects import CancelChild, StartChild


@dataclass
class ChildState:
    seq: int
    execution_id: str
    workflow: str
    future: asyncio.Future[msgspec.Raw]
    closed: bool = False
    cancel_requested: bool = False


class ChildMachine:
    def __init__(self) -> None:
        self.children: dict[int, ChildState] = {}

    def start_child(self: Any, workflow: str, input: msgspec.Raw, execution_id: str | None) -> ChildState:
        self.check_payload(input, what=f"input of child workflow {workflow!r}")
        seq = self._next_seq("child")
        child_id = execution_id or f"{self.execution_id}-c{seq}"
        decision = self._decide(ChildStarted(seq=seq, workflow=workflow, execution_id=child_id, input=input))
        state = ChildState(seq, decision.execution_id, workflow, self.loop.create_future())
        self.children[seq] = state
        self._effect(StartChild(decision, self.run))
        return state

    def _child_closed(self: Any, event: ChildClosed) -> bool:
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

    def cancel_child(self: Any, state: ChildState) -> None:
        if state.closed or state.cancel_requested or self.closed:
            return
        state.cancel_requested = True
        self._decide(ChildCancelRequested(seq=state.seq))
        self._effect(CancelChild(state.execution_id))

    def _cancel_open_children(self: Any) -> None:
        for state in self.children.values():
            if not state.closed and not state.cancel_requested:
                state.cancel_requested = True
                self._decide(ChildCancelRequested(seq=state.seq))
                self._effect(CancelChild(state.execution_id))
