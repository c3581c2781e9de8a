"""ConsoleServer: the console's HTTP server (uvicorn), owned like any other background task.

``start()`` returns once the socket listens (or raises); ``stop()`` ends the live streams,
then the server, within a deadline. Signals stay with the owner (``perdure console`` or
``perdure worker``): uvicorn's own handlers would take SIGTERM from the runtime's drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import structlog
import uvicorn

from perdure.client import Client
from perdure.runtime.supervisor import Supervisor

from .pages import Pages, create_app

log = structlog.get_logger("perdure.console")

DEFAULT_PORT = 8240


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the owner handles signals

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()


class ConsoleServer:
    def __init__(self, client: Client, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        self.client = client
        self.host = host
        self.port = port
        self.app = create_app(client)
        self._supervisor = Supervisor("console")
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))  # port 0: a free one, read back below
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        server = self._server = _Server(config)
        serving = self._supervisor.spawn(
            server.serve(sockets=[sock]), name=f"http:{self.port}", critical=True
        )
        listening = asyncio.ensure_future(server.listening.wait())
        await asyncio.wait({serving, listening}, return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        if serving.done():
            sock.close()
            serving.result()  # the startup error
            raise RuntimeError("the console's server stopped as it started")
        log.info("console.listening", url=self.url)

    async def wait_failed(self) -> None:
        await self._supervisor.failed.wait()

    async def stop(self, timeout: float = 5.0) -> None:
        pages: Pages = self.app.state.pages
        pages.stopping.set()
        if self._server is not None:
            self._server.should_exit = True
            await self._supervisor.wait_idle(timeout)
        await self._supervisor.stop(timeout)
