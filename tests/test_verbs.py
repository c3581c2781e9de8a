"""The verb table (runtime/verbs.py): every row has one route and one server, and a new verb
is a new row plus a handler (sent by ``Client.call``, served by ``actors/verb_server.serve``)."""

from __future__ import annotations

import typing

import msgspec
import pytest

from perdure import Client
from perdure.actors.completion import CompletionService, HeartbeatService
from perdure.actors.verb_server import error_reply, serve
from perdure.runtime import codec, verbs
from perdure.runtime.errors import InvalidPayload
from perdure.runtime.messages import AnyInboxMessage, ApiError, HeartbeatStatus, QueryReply
from perdure.runtime.naming import Names
from perdure.runtime.verbs import Route, Verb


def test_each_verb_has_one_row() -> None:
    keys = [(verb.route, verb.name) for verb in verbs.VERBS]
    assert len(keys) == len(set(keys)), keys


def test_every_inbox_verb_is_an_inbox_message_under_its_tag() -> None:
    """An ``INBOX`` row is applied by the execution actor: its request must be in the inbox
    union (where ``inbox_translation`` must handle it), and its name is the message's tag."""
    members = set(typing.get_args(AnyInboxMessage))
    for verb in verbs.verbs(Route.INBOX):
        assert verb.request in members, verb.name
        assert msgspec.inspect.type_info(verb.request).tag == verb.name  # type: ignore[attr-defined]


async def test_every_api_verb_is_served_by_the_completion_service(client: Client) -> None:
    """No request verb without a server, and no server outside the table."""
    heartbeats = HeartbeatService(client.conn, client.names, partitions=1)
    service = CompletionService(client.conn, client.names, heartbeats)
    assert set(service.handlers()) == set(verbs.verbs(Route.API))
    assert verbs.verbs(Route.PARTITION) == (verbs.QUERY,)  # served by actors/partition_host.py


def test_replies_keep_their_wire_format() -> None:
    """Other languages read these bytes (the ``<ns>.api.*`` contract)."""
    status = HeartbeatStatus(cancel_requested=True)
    assert codec.encode(status) == b'{"ok":true,"cancel_requested":true,"closed":false}'
    refusal = QueryReply(ok=False, error=ApiError(code=InvalidPayload.code, message="m"))
    expected = b'{"ok":false,"error":{"code":"%s","message":"m"}}' % InvalidPayload.code.encode()
    assert codec.encode(refusal) == error_reply(InvalidPayload("m")) == expected
    names = Names("ns")
    assert verbs.COMPLETE.subject(names) == "ns.api.complete"
    assert verbs.QUERY.partition_subject(names, 3) == "ns.api.query.3"
    assert verbs.SIGNAL.subject(names, "e1") == "ns.inbox.e1"


class Ping(msgspec.Struct, frozen=True, kw_only=True):
    text: str


class Pong(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    ok: bool
    text: str = ""
    error: ApiError | None = None


ECHO: Verb[Ping, Pong] = Verb("echo", Route.API, Ping, Pong)


async def test_a_new_verb_is_a_row_and_a_handler(client: Client) -> None:
    """Served and called through the same two functions the built-in verbs use; a
    ``PerdureError`` raised by the handler reaches the caller as that error."""

    async def echo(request: Ping, reply: str) -> Pong:
        if not request.text:
            raise InvalidPayload("nothing to echo")
        return Pong(ok=True, text=request.text.upper())

    sub = await serve(client.conn, client.names, ECHO, echo)
    try:
        assert (await client.call(ECHO, Ping(text="hi"))).text == "HI"
        with pytest.raises(InvalidPayload, match="nothing to echo"):
            await client.call(ECHO, Ping(text=""))
    finally:
        await sub.stop()


async def test_an_inbox_verb_is_not_served_by_a_handler(client: Client) -> None:
    async def never(request: typing.Any, reply: str) -> None:
        raise AssertionError("not reached")

    with pytest.raises(ValueError, match="inbox"):
        await serve(client.conn, client.names, verbs.CANCEL, never)
