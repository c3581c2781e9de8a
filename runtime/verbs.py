"""The table of client verbs: what each one sends, what it gets back, and which route it takes.

A verb travels one of three routes (``Route``):

- ``INBOX``: a message published to the execution's inbox (``<ns>.inbox.<id>``, JetStream,
  deduplicated by ``Nats-Msg-Id``); the sender learns that it is stored (``Accepted``), and the
  execution actor applies it when it absorbs it (``actors/inbox_translation.py``). A sender
  that wants the outcome (token completion does) adds ``REPLY_HEADER``: the actor answers once
  the step is in history.
- ``API``: a request on ``<ns>.api.<name>`` served by any runtime (queue group
  ``perdure-runtime``), JSON bodies any language can send.
- ``PARTITION``: a request on ``<ns>.api.<name>.<partition>`` served by the runtime that owns
  the execution's partition (queue group ``perdure-query``): it reads live state.

Sending is ``Client.call(verb, request)`` (client/client.py); serving a request verb is a
handler registered by ``actors/verb_server.serve`` (``CompletionService`` for ``API`` rows,
``PartitionHost`` for ``PARTITION`` rows). A new verb is a new row here, its request/reply
``Struct`` in ``runtime/messages.py``, and one handler (an ``INBOX`` row: a case in
``inbox_translation.translate``, which mypy demands through ``assert_never``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec

from .messages import (
    ApiReply,
    CancelWorkflow,
    CompleteRequest,
    FailRequest,
    HeartbeatRequest,
    QueryReply,
    QueryRequest,
    SignalRequest,
    SignalWorkflow,
    StartWorkflow,
    TerminateWorkflow,
)
from .naming import Names, partition_of

Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep", bound=msgspec.Struct)


class Route(enum.Enum):
    INBOX = "inbox"  # stored in the execution's inbox; applied (and answered) when absorbed
    API = "api"  # request/reply, any runtime of the namespace
    PARTITION = "partition"  # request/reply, the owner of the execution's partition

    @property
    def queue(self) -> str:
        """The queue group its servers join (one of them answers each request)."""
        return {Route.API: "perdure-runtime", Route.PARTITION: "perdure-query"}.get(self, "")


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    """The reply to an ``INBOX`` verb: the message is stored (``duplicate``: it was already)."""

    seq: int = 0
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Verb(Generic[Req, Rep]):
    """One row: ``name`` (the subject token of a request verb, the tag of an inbox message)."""

    name: str
    route: Route
    request: type[Req]
    reply: type[Rep]

    def subject(self, names: Names, execution_id: str = "", partitions: int = 0) -> str:
        """Where a request for ``execution_id`` goes (``partitions``: for ``PARTITION`` rows)."""
        if self.route is Route.INBOX:
            return names.inbox(execution_id)
        if self.route is Route.PARTITION:
            return self.partition_subject(names, partition_of(execution_id, partitions))
        return names.api(self.name)

    def partition_subject(self, names: Names, partition: int) -> str:
        """The subject one partition's owner serves (a ``PARTITION`` row)."""
        return names.api(f"{self.name}.{partition}")


# Inbox verbs: what a client puts in an execution's inbox.
START: Verb[StartWorkflow, Accepted] = Verb("start", Route.INBOX, StartWorkflow, Accepted)
SIGNAL: Verb[SignalWorkflow, Accepted] = Verb("signal", Route.INBOX, SignalWorkflow, Accepted)
CANCEL: Verb[CancelWorkflow, Accepted] = Verb("cancel", Route.INBOX, CancelWorkflow, Accepted)
TERMINATE: Verb[TerminateWorkflow, Accepted] = Verb("terminate", Route.INBOX, TerminateWorkflow, Accepted)

# API verbs (JSON, any language): served by actors/completion.py. Completions are forwarded to
# the inbox with REPLY_HEADER, so their reply comes from the actor once the outcome is in history.
COMPLETE: Verb[CompleteRequest, ApiReply] = Verb("complete", Route.API, CompleteRequest, ApiReply)
FAIL: Verb[FailRequest, ApiReply] = Verb("fail", Route.API, FailRequest, ApiReply)
HEARTBEAT: Verb[HeartbeatRequest, ApiReply] = Verb("heartbeat", Route.API, HeartbeatRequest, ApiReply)
SIGNAL_API: Verb[SignalRequest, ApiReply] = Verb("signal", Route.API, SignalRequest, ApiReply)

# Partition verbs: served by the partition's owner (actors/partition_host.py).
QUERY: Verb[QueryRequest, QueryReply] = Verb("query", Route.PARTITION, QueryRequest, QueryReply)

VERBS: tuple[Verb[msgspec.Struct, msgspec.Struct], ...] = (
    START,
    SIGNAL,
    CANCEL,
    TERMINATE,
    COMPLETE,
    FAIL,
    HEARTBEAT,
    SIGNAL_API,
    QUERY,
)  # type: ignore[assignment]


def verbs(route: Route) -> tuple[Verb[msgspec.Struct, msgspec.Struct], ...]:
    return tuple(verb for verb in VERBS if verb.route is route)


__all__ = ["VERBS", "Accepted", "Route", "Verb", "verbs"]
