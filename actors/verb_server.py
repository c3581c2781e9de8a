"""One way to serve a request verb of the table (runtime/verbs.py): decode, handle, answer.

A handler receives the decoded request and the reply subject, and returns the reply ``Struct``
(encoded and sent here), or ``None`` when someone else answers later (a completion forwarded
to the inbox is answered by the execution actor once it is in history). A ``PerdureError``
becomes ``{"ok": false, "error": {"code", "message"}}``, the same bytes for every verb.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec

from perdure.runtime import codec
from perdure.runtime.errors import PerdureError
from perdure.runtime.limits import check_size
from perdure.runtime.messages import ApiError, ApiReply
from perdure.runtime.naming import Names
from perdure.runtime.nats_client import Connection, Subscription
from perdure.runtime.verbs import Route, Verb

Handler = Callable[[Any, str], Awaitable[msgspec.Struct | None]]


def error_reply(exc: PerdureError) -> bytes:
    return codec.encode(ApiReply(ok=False, error=ApiError(code=exc.code, message=exc.message)))


async def serve(
    conn: Connection,
    names: Names,
    verb: Verb[Any, Any],
    handler: Handler,
    *,
    partition: int | None = None,
) -> Subscription:
    """Serve ``verb`` (one partition's subject for a ``PARTITION`` row) in its queue group."""
    if verb.route is Route.INBOX:
        raise ValueError(f"verb {verb.name!r} goes to the inbox: the execution actor serves it")
    if verb.route is Route.PARTITION:
        assert partition is not None, f"verb {verb.name!r} is served per partition"
        subject = verb.partition_subject(names, partition)
    else:
        subject = names.api(verb.name)
    decoder = msgspec.json.Decoder(verb.request)
    what = f"{verb.name} request"
    checks_size = verb.route is Route.API

    async def on_request(data: bytes, headers: dict[str, str], reply: str) -> None:
        try:
            if checks_size:
                # Forwarded to the inbox with its envelope and reply header, a body over the
                # limit would exceed the server's max_payload and cost this runtime its connection.
                check_size(len(data), conn.payload_limit, what=what)
            answer = await handler(codec.decode(decoder, data, what=what), reply)
            body = None if answer is None else codec.encode(answer)
        except PerdureError as exc:
            body = error_reply(exc)
        if body is not None and reply:
            await conn.publish_core(reply, body)

    return await conn.serve(subject, on_request, queue=verb.route.queue)


async def serve_all(
    conn: Connection, names: Names, handlers: Mapping[Verb[Any, Any], Handler]
) -> list[Subscription]:
    """One subscription per row of ``handlers`` (``API`` rows)."""
    return [await serve(conn, names, verb, handler) for verb, handler in handlers.items()]
