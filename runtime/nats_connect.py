"""A NATS connection's beginning and end: the first connect, bounded and saying why it
failed, and the watch that tells when the connection is closed for good.

nats-py applies ``max_reconnect_attempts`` to the first connect too, so the ``-1`` a runtime
wants once connected made a wrong port, an unresolvable host or a wrong password hang for
ever (a warning every 250 ms). Here the first connect is made with reconnects off, retried
until a bound, and classified; then endless reconnects are switched on.

Endless reconnects end in two ways only: nats-py gives up (the server closed the
connection for good: a protocol violation such as a message over ``max_payload``), or the
server keeps refusing the login (credentials revoked or rotated), which nats-py would retry
for ever. ``ClosureWatch`` turns both into one ``ConnectionLost`` that a ``Client`` raises
and a runtime exits on, so a supervisor restarts it instead of it staying up doing nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import structlog
from nats.aio.client import Client as _NatsClient

from .errors import ConnectionLost, PerdureError
from .urls import redact_url

log = structlog.get_logger("perdure.nats")

# Logins refused in a row on reconnect before the connection is given up (nats.go: 2).
REFUSED_LOGINS_BEFORE_CLOSING = 3


def geturl(nc: _NatsClient) -> str:
    url = nc.connected_url
    return url.geturl() if url else ""


async def first_connect(
    options: dict[str, Any], bound: float, shown: str, errors: list[BaseException]
) -> _NatsClient:
    """A nats-py client connected within ``bound`` seconds, set to reconnect for ever.

    Each round tries every seed with reconnects off; rounds repeat until the bound;
    ``errors`` collects what each round met (the error callback adds to it) for the one
    message raised at the end. The error callback raises what retrying cannot cure (a
    refused login or TLS handshake, ``nats_access.refusal``): that ends the connect at once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while True:
        remaining = deadline - loop.time()
        nc = _NatsClient()  # a fresh one per round: a closed nats-py client is not reusable
        try:
            async with asyncio.timeout(max(remaining, 0.05)):
                await nc.connect(
                    **options,
                    allow_reconnect=False,
                    max_reconnect_attempts=1,  # each seed twice per round, then NoServersError
                    connect_timeout=max(0.05, min(remaining, 5.0)),  # type: ignore[arg-type]  # typed int, takes seconds
                )
            break
        except PerdureError:
            await close_quickly(nc)
            raise
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            errors.append(exc)
            await close_quickly(nc)
            if loop.time() + 0.25 >= deadline:
                cause = _describe(errors)
                raise ConnectionLost(
                    f"cannot connect to NATS at {shown} within {bound:g} s: {cause}"
                ) from None
            errors.clear()
            await asyncio.sleep(0.25)
    nc.options["allow_reconnect"] = True
    nc.options["max_reconnect_attempts"] = -1
    return nc


async def close_quickly(nc: _NatsClient) -> None:
    """Clean up a client that did not connect. Bounded: closing a half-made TLS connection
    can wait on the peer, and this is only cleanup."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(0.1):
            await nc.close()


def _describe(errors: list[BaseException]) -> str:
    """The most telling cause among the errors of one round of attempts."""
    for exc in errors:
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve the host name ({exc.strerror or exc})"
    for exc in errors:
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused (is nats-server running on that port?)"
    for exc in reversed(errors):
        if isinstance(exc, TimeoutError):
            return "the server did not answer (timed out)"
        if not isinstance(exc, nats.errors.NoServersError):
            return redact_url(str(exc) or type(exc).__name__)
    return "no server available"


class ClosureWatch:
    """Whether a connection is closed for good, and why (``lost``)."""

    def __init__(self, shown: str) -> None:
        self.shown = shown  # the URLs, credentials redacted
        self.lost: ConnectionLost | None = None  # set when NATS closed the connection for good
        self.closing = False  # we are closing it: nothing to report
        self._closed = asyncio.Event()
        self._refused_logins = 0
        self._giving_up: asyncio.Task[None] | None = None
        self._close: Callable[[], Awaitable[None]] | None = None
        self._on_lost: Callable[[ConnectionLost], None] = lambda lost: None
        # Tasks waiting on this connection (``Connection.unless_closed``), cancelled when it
        # closes for good; ``interrupted``: those this watch cancelled (not their callers).
        self.waiting: set[asyncio.Task[Any]] = set()
        self.interrupted: set[asyncio.Task[Any]] = set()

    def bind(self, close: Callable[[], Awaitable[None]], on_lost: Callable[[ConnectionLost], None]) -> None:
        """How to close the connection, and what to fail when it is lost (pending acks)."""
        self._close, self._on_lost = close, on_lost

    def reconnected(self) -> None:
        self._refused_logins = 0

    def refused_login(self, exc: Exception) -> None:
        """Count a reconnect's refused login; after a few in a row, close for good."""
        if "authorization" not in str(exc).lower() or self._close is None:
            return  # other errors interleave (resets, timeouts); only a reconnect clears the count
        self._refused_logins += 1
        if self._refused_logins == REFUSED_LOGINS_BEFORE_CLOSING:
            self._giving_up = asyncio.get_running_loop().create_task(
                self._give_up(self._close, exc), name="nats:close-refused-login"
            )

    async def _give_up(self, close: Callable[[], Awaitable[None]], cause: Exception) -> None:
        try:
            await close()
        except Exception as exc:  # flushing to the dead socket can fail before nats-py's callbacks
            log.debug("nats.close_failed", error=str(exc))
        finally:
            if not self._closed.is_set():
                self.closed(cause)

    def closed(self, cause: BaseException | None) -> None:
        """nats-py closed the connection and will not reconnect, or we closed it."""
        if not self.closing and not self._closed.is_set():
            why = redact_url(str(cause or "closed by the server"))
            self.lost = ConnectionLost(f"NATS at {self.shown} closed the connection for good: {why}")
            log.error("nats.closed", url=self.shown, error=why)
            self._on_lost(self.lost)
        self._closed.set()
        for task in self.waiting:
            self.interrupted.add(task)
            task.cancel()

    async def wait(self) -> ConnectionLost | None:
        await self._closed.wait()
        return self.lost

    def check_open(self) -> None:
        if self.lost is not None:
            raise ConnectionLost(self.lost.message)
