"""The first connect to NATS: bounded, and saying why it failed.

nats-py applies ``max_reconnect_attempts`` to the first connect too, so the ``-1`` a runtime
wants once connected made a wrong port, an unresolvable host or a wrong password hang for
ever (a warning every 250 ms). Here the first connect is made with reconnects off, retried
until a bound, and classified; ``Connection.connect`` then switches endless reconnects on.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import nats.errors
from nats.aio.client import Client as _NatsClient

from .errors import ConfigurationError, ConnectionLost
from .urls import redact_url


def geturl(nc: _NatsClient) -> str:
    url = nc.connected_url
    return url.geturl() if url else ""


async def first_connect(
    options: dict[str, Any], bound: float, shown: str, errors: list[BaseException]
) -> _NatsClient:
    """A nats-py client connected within ``bound`` seconds, set to reconnect for ever.

    Each round tries every seed with reconnects off (so a refused login raises at once);
    rounds repeat until the bound; ``errors`` collects what each round met (the error
    callback adds to it too) for the one message raised at the end.
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
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            errors.append(exc)
            with contextlib.suppress(Exception):
                await nc.close()
            refused = _refused_login(errors)
            if refused is not None:
                raise ConfigurationError(f"NATS at {shown} refused to log in: {refused}") from None
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


def _refused_login(errors: list[BaseException]) -> str | None:
    for exc in errors:
        text = str(exc).lower()
        if isinstance(exc, nats.errors.AuthorizationError) or "authorization" in text:
            return "authorization violation (wrong user, password or token)"
        if "authentication" in text:
            return redact_url(str(exc))
    return None


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
