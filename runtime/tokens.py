"""Activity tokens: opaque, URL-safe names of one activity attempt of one execution.

A token carries a random nonce that is recorded in history when the activity is
scheduled, so it cannot be guessed from the execution id; anything that does not parse,
or whose nonce does not match, is refused with ``InvalidToken`` naming the problem.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading

import msgspec

from .errors import InvalidToken
from .naming import check_execution_id

_PREFIX = "pd1."


class TokenData(msgspec.Struct, frozen=True, array_like=True):
    execution_id: str
    run: int
    seq: int
    attempt: int
    nonce: str


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(TokenData)


_NONCE_BYTES = 12
# One getrandom() call per 64 nonces instead of one per activity scheduled: a nonce is drawn in
# every step that schedules an activity (workflow threads, hence the lock). Same source and
# strength as ``secrets.token_urlsafe(12)``; a forked child starts with an empty pool.
_pool = bytearray()
_pool_lock = threading.Lock()
os.register_at_fork(after_in_child=_pool.clear)


def new_nonce() -> str:
    with _pool_lock:
        if not _pool:
            _pool.extend(os.urandom(_NONCE_BYTES * 64))
        chunk = bytes(_pool[-_NONCE_BYTES:])
        del _pool[-_NONCE_BYTES:]
    return base64.urlsafe_b64encode(chunk).decode()


def encode_token(data: TokenData) -> str:
    return _PREFIX + base64.urlsafe_b64encode(_encoder.encode(data)).rstrip(b"=").decode()


def decode_token(token: object) -> TokenData:
    if not isinstance(token, str) or not token:
        raise InvalidToken("token is missing or not a string")
    if not token.startswith(_PREFIX):
        raise InvalidToken(f"token does not start with {_PREFIX!r}: not a Perdure activity token")
    body = token[len(_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        data = _decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        raise InvalidToken(f"token is malformed or truncated ({exc})") from None
    try:
        check_execution_id(data.execution_id)
    except Exception:
        raise InvalidToken("token names an invalid execution id") from None
    if data.seq < 1 or data.attempt < 1 or data.run < 1 or not data.nonce:
        raise InvalidToken("token fields are out of range")
    return data
