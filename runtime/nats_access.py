"""Access refusals from NATS, turned into Perdure errors that say what was refused and why.

Two kinds, both of which nats-py reports only through its error callback:

* **At connect**: a refused login (``'Authorization Violation'``) or a failed TLS handshake
  (an untrusted or misnamed certificate). nats-py, set to reconnect for ever, would retry
  them every 250 ms for ever; ``refusal()`` classifies them so the first connect fails at
  once with ``NotAuthenticated`` or ``TLSRefused`` (retrying cannot help: fix the setting).
* **Once connected**: ``Permissions Violation for Publish to "<subject>"`` (or
  ``Subscription to``). The server drops the message and keeps the connection, so the
  request or publish that needed it would wait for its timeout and then blame the network.
  ``PermissionWatch`` fails the operations waiting on that subject at once with
  ``PermissionDenied`` naming the subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import Callable, Iterator
from typing import Any

from .errors import NotAuthenticated, PerdureError, PermissionDenied, TLSRefused
from .urls import redact_url

# nats-py lower-cases the server's -ERR text: nats: permissions violation for publish to "x"
_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "?([^"\s\']+)')


def shown_urls(urls: list[str]) -> str:
    """The seed URLs for a message: a user stays, a password or token becomes ``***``."""
    return redact_url(", ".join(urls))


def login_description(urls: list[str], configured: str) -> str:
    """What was offered to log in, for a refusal message (``ConnectOptions.describe()``)."""
    if configured == "no credentials" and any(redact_url(url) != url for url in urls):
        return "credentials in the URL"
    return configured


def refusal(exc: BaseException, shown: str, how: str) -> PerdureError | None:
    """The error to raise at once for a first-connect failure that retrying cannot cure,
    or None (refused connection, timeout: the caller goes on trying). ``shown`` is the
    redacted URL list, ``how`` what was configured (``ConnectOptions.describe()``)."""
    text = str(exc).lower()
    if (
        "authorization violation" in text
        or "authentication" in text
        or type(exc).__name__ == "AuthorizationError"
    ):
        return NotAuthenticated(
            f"NATS at {shown} refused the login ({how}): authorization violation; check the user, "
            "password, token, NKey or credentials file, and that they are not revoked"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSRefused(
            f"TLS to NATS at {shown} failed: the server's certificate is not trusted ({exc.verify_message}); "
            "give the CA that signed it (PERDURE_TLS_CA) or the name it carries (PERDURE_TLS_SERVER_NAME)"
        )
    if isinstance(exc, ssl.SSLError):
        hint = " (the server wants a client certificate: PERDURE_TLS_CERT)" if "REQUIRED" in str(exc) else ""
        return TLSRefused(f"TLS to NATS at {shown} failed ({how}): {exc.reason or exc}{hint}")
    if "tls" in text and "required" in text:  # (not a handshake timeout: that may pass)
        return TLSRefused(f"TLS to NATS at {shown} failed ({how}): {exc}")
    return None


def encrypted(nc: Any) -> bool:
    """Whether nats-py's connection runs over TLS. nats-py upgrades to TLS only when the
    server asks for it, whatever the client's options: a server (or an impostor) that does
    not gets a plain connection. Read from the stream writer's SSL object (nats-py 2.x)."""
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    if writer is not None:
        return writer.get_extra_info("ssl_object") is not None
    return bool(getattr(nc, "_server_info", {}).get("tls_required"))  # pragma: no cover


def not_encrypted(shown: str) -> TLSRefused:
    return TLSRefused(
        f"NATS at {shown} did not use TLS, though TLS options are set: refusing an unencrypted "
        "connection (configure TLS on the server, or drop the PERDURE_TLS_* options)"
    )


def violation(exc: BaseException) -> tuple[str, str] | None:
    """``("publish" | "subscription", subject)`` if ``exc`` reports a permissions violation."""
    match = _VIOLATION.search(str(exc).lower())
    return (match.group(1), match.group(2)) if match else None


class _Guard:
    __slots__ = ("cancelling", "denied", "prefixes", "task")

    def __init__(self, prefixes: tuple[str, ...], task: asyncio.Task[Any]) -> None:
        self.prefixes = prefixes
        self.task = task
        self.cancelling = task.cancelling()
        self.denied: PermissionDenied | None = None


class PermissionWatch:
    """Operations waiting on a subject, failed at once when the server refuses it.

    ``guard(*prefixes)`` covers a block run by one task: a violation on a subject starting
    with one of ``prefixes`` cancels the task, and the block raises ``PermissionDenied`` instead (the
    same way ``asyncio.timeout`` turns its cancellation into ``TimeoutError``).
    ``on_denied(listener)`` lets the connection fail its pipelined publishes' ack futures.
    Violations are rare; the hot path pays nothing per publish.
    """

    def __init__(self, inbox_prefix: str = "_INBOX") -> None:
        self._inbox = inbox_prefix.lower()  # where this connection's replies arrive
        self._guards: list[_Guard] = []
        self._listeners: list[Callable[[str, PermissionDenied], None]] = []
        self._refused_inbox: str | None = None  # a reply subscription the server refused

    def report(self, exc: BaseException) -> PermissionDenied | None:
        """Feed every error-callback exception here; a violation fails its waiters."""
        found = violation(exc)
        if found is None:
            return None
        kind, subject = found
        inbox = kind == "subscription" and subject.startswith(self._inbox)
        if inbox:
            self._refused_inbox = subject
        denied = PermissionDenied(
            f"permission denied: this NATS user may not {'publish to' if kind == 'publish' else 'subscribe to'} "
            f"{subject!r} (permissions violation); see the README's Security section for what each role needs"
        )
        for listener in self._listeners:
            listener(subject, denied)
        for guard in self._guards:  # a lost reply subscription: no request can be answered
            if guard.denied is None and (subject.startswith(guard.prefixes) or inbox):
                guard.denied = denied
                guard.task.cancel()
        return denied

    def inbox_refusal(self) -> PermissionDenied | None:
        """Checked once connected (after a flush, so the server has answered our reply
        subscriptions): without them every request would be sent, and maybe applied, with its
        reply lost. Say so before anything is sent."""
        if self._refused_inbox is None:
            return None
        return PermissionDenied(
            f"permission denied: this NATS user may not subscribe to its reply subjects "
            f"({self._refused_inbox!r}); allow '_INBOX.>', or set PERDURE_INBOX_PREFIX to a prefix "
            "it may subscribe to (permissions violation)"
        )

    def on_denied(self, listener: Callable[[str, PermissionDenied], None]) -> None:
        """Call ``listener(subject, error)`` on each violation (lower-case subject): the
        connection fails its pipelined publishes to that subject (found in its table of
        pending acks, so the hot path adds nothing per publish)."""
        self._listeners.append(listener)

    @contextlib.contextmanager
    def guard(self, *prefixes: str) -> Iterator[None]:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always called from a task
            yield
            return
        guard = _Guard(tuple(p.lower() for p in prefixes), task)
        self._guards.append(guard)
        try:
            yield
        except asyncio.CancelledError:
            if guard.denied is not None and task.uncancel() <= guard.cancelling:
                raise guard.denied from None
            raise
        finally:
            self._guards.remove(guard)
