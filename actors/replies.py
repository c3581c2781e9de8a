"""Replies to inbox messages that asked for one (``REPLY_HEADER``: token completions).

A sender waits until its message's outcome is in history: the answer says whether the
step took it in, and if not, why (the refusal from ``inbox_translation``, or why the
instance declined it). Replies are core NATS publishes: a sender that gave up misses nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

from perdure.runtime import codec
from perdure.runtime.errors import ActivityClosed
from perdure.runtime.messages import REPLY_HEADER, AnyInboxMessage, ApiReply
from perdure.runtime.nats_client import Connection

from .inbox_translation import Refusal, Translation, not_applied

OK = ApiReply(ok=True)


def verdict(
    message: AnyInboxMessage, translation: Translation | None, *, accepted: bool, execution_id: str
) -> ApiReply:
    """The answer to ``message``: ok if its input was ``accepted`` into history."""
    if accepted:
        return OK
    error = translation.error if isinstance(translation, Refusal) else not_applied(message, execution_id)
    return ApiReply(ok=False, error=error, closed=error.code == ActivityClosed.code)


def wants_reply(headers: Mapping[str, str]) -> bool:
    return REPLY_HEADER in headers


async def send_reply(conn: Connection, headers: Mapping[str, str], reply: ApiReply) -> None:
    subject = headers.get(REPLY_HEADER)
    if subject:
        await conn.publish_core(subject, codec.encode(reply))
