"""Raw JSON payloads. msgspec cannot put ``Raw`` in a union, so "no value" is a ``null`` Raw."""

import msgspec

NULL = msgspec.Raw(b"null")


def is_null(raw: msgspec.Raw | None) -> bool:
    return raw is None or bytes(raw) == b"null"
