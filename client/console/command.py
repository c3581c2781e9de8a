"""``perdure console`` and ``perdure worker --console-port``: connect a client, serve the console."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from perdure.client import Client
from perdure.runtime.connect_options import ConnectOptions
from perdure.runtime.settings import Settings

from .server import ConsoleServer


async def run_console(args: argparse.Namespace) -> None:
    """Serve until SIGINT or SIGTERM (``args``: url, namespace, host, port, connection flags)."""
    client = await Client.connect(args.url, namespace=args.namespace, options=ConnectOptions.from_args(args))
    console = ConsoleServer(client, host=args.host, port=args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await console.start()
        print(f"Perdure console for namespace {args.namespace!r} at {console.url}", flush=True)
        failed = asyncio.ensure_future(console.wait_failed())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({failed, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for fut in (failed, stopped):
            fut.cancel()
    finally:
        await console.stop()
        await client.close()


class WorkerConsole:
    """The console a runtime serves beside its work (``perdure worker --console-port``)."""

    def __init__(self, client: Client, server: ConsoleServer) -> None:
        self.client = client
        self.server = server

    async def stop(self) -> None:
        await self.server.stop()
        await self.client.close()


async def start_for_worker(settings: Settings, port: int, host: str | None = None) -> WorkerConsole:
    """A console on ``port``, with a client connection of its own to the runtime's NATS.
    It listens on 127.0.0.1 unless ``PERDURE_CONSOLE_HOST`` says otherwise (a container)."""
    host = host or os.environ.get("PERDURE_CONSOLE_HOST", "127.0.0.1")
    client = await Client.connect(settings.url, namespace=settings.namespace, options=settings.connect)
    server = ConsoleServer(client, host=host, port=port)
    try:
        await server.start()
    except BaseException:
        await client.close()
        raise
    return WorkerConsole(client, server)
