"""One reused encoder/decoder per wire type (typed decoders cost to build; see msgspec perf tips).

Everything is JSON: history and messages are readable with the ``nats`` CLI, and payloads
(inputs, results, checkpoints) nest as ``msgspec.Raw`` without being re-parsed.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from .errors import InvalidPayload
from .events import HistoryStep
from .messages import (
    ActivityRecord,
    ActivityTask,
    AnyInboxMessage,
    ApiReply,
    CompleteRequest,
    ExecutionRecord,
    FailRequest,
    HeartbeatRequest,
    Lease,
    QueryReply,
    QueryRequest,
    SignalRequest,
    TimerEntry,
)
from .rawjson import NULL as NULL  # re-exported: "no value" is spelled codec.NULL too
from .rawjson import is_null as is_null

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
encode = _encoder.encode

history_step = msgspec.json.Decoder(HistoryStep)
inbox_message = msgspec.json.Decoder(AnyInboxMessage)
activity_task = msgspec.json.Decoder(ActivityTask)
timer_entry = msgspec.json.Decoder(TimerEntry)
activity_record = msgspec.json.Decoder(ActivityRecord)
execution_record = msgspec.json.Decoder(ExecutionRecord)
lease = msgspec.json.Decoder(Lease)
complete_request = msgspec.json.Decoder(CompleteRequest)
fail_request = msgspec.json.Decoder(FailRequest)
heartbeat_request = msgspec.json.Decoder(HeartbeatRequest)
signal_request = msgspec.json.Decoder(SignalRequest)
query_request = msgspec.json.Decoder(QueryRequest)
query_reply = msgspec.json.Decoder(QueryReply)
api_reply = msgspec.json.Decoder(ApiReply)


def decode(decoder: msgspec.json.Decoder[T], data: bytes, *, what: str) -> T:
    """Decode or raise ``InvalidPayload`` saying what did not decode and why."""
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise InvalidPayload(f"{what} does not decode: {exc}") from None


class PayloadCodec:
    """Encodes user values and decodes them into a declared type (built once per type)."""

    def __init__(self, type_: Any) -> None:
        self.type = type_
        self._decoder = msgspec.json.Decoder(type_) if type_ is not Any else msgspec.json.Decoder()

    def decode(self, raw: bytes | msgspec.Raw, *, what: str) -> Any:
        try:
            return self._decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise InvalidPayload(f"{what} does not decode as {_type_name(self.type)}: {exc}") from None

    def encode(self, value: Any, *, what: str) -> msgspec.Raw:
        try:
            return msgspec.Raw(_encoder.encode(value))
        except (TypeError, msgspec.EncodeError) as exc:
            raise InvalidPayload(f"{what} cannot be encoded: {exc}") from None

    def check(self, value: Any, *, what: str) -> msgspec.Raw:
        """Encode ``value`` and make sure it decodes back as the declared type."""
        raw = self.encode(value, what=what)
        self.decode(raw, what=what)
        return raw


def _type_name(type_: Any) -> str:
    return getattr(type_, "__name__", None) or repr(type_)
