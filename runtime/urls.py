"""NATS server URLs: split a seed list, and redact the credentials in them.

A URL may carry a user and password (``nats://alice:s3cret@host:4222``) or a token
(``nats://t0ken@host``). Wherever a URL is logged, printed or put in an error it goes
through ``redact_url`` first: the user stays (it helps to tell which account), the secret
becomes ``***``.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from .errors import ConfigurationError

_SCHEMES = ("nats", "tls", "ws", "wss")

# scheme://userinfo@ : userinfo has no '/', '@' or whitespace (RFC 3986 percent-encodes them)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s,]+)@")


def _redact_userinfo(match: re.Match[str]) -> str:
    user, colon, _secret = match.group("userinfo").partition(":")
    return f"{match.group('scheme')}{user}:***@" if colon else f"{match.group('scheme')}***@"


def redact_url(text: str) -> str:
    """``text`` (a URL, a comma-separated list of them, or any message quoting them) with
    every password or token replaced by ``***``."""
    if "@" not in text:
        return text
    return _USERINFO.sub(_redact_userinfo, text)


def split_urls(servers: str | list[str]) -> list[str]:
    """Seed URLs from a comma-separated string or a list of them (blanks dropped)."""
    items = [servers] if isinstance(servers, str) else list(servers)
    return [u.strip() for item in items for u in item.split(",") if u.strip()]


def check_urls(urls: list[str]) -> None:
    """Raise ``ConfigurationError`` for a malformed seed URL (before any connect attempt:
    nats-py would either raise a bare error or retry a wrong host forever)."""
    if not urls:
        raise ConfigurationError("no NATS URL given")
    for url in urls:
        full = url if "://" in url else f"nats://{url}"
        shown = redact_url(url)
        try:
            parts = urlsplit(full)
            parts.port  # noqa: B018 - parsing the port is the check
        except ValueError as exc:
            raise ConfigurationError(f"malformed NATS URL {shown!r}: {exc}") from None
        web = parts.scheme in ("ws", "wss")
        if (
            parts.scheme not in _SCHEMES
            or not parts.hostname
            or (parts.path not in ("", "/") and not web)
            or parts.query
            or parts.fragment
        ):
            raise ConfigurationError(
                f"malformed NATS URL {shown!r}: expected nats://[user:password@]host[:port]"
            )
