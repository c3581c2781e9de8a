"""``perdure``: the runtime daemon's command line, and the composition root.

This is the one module of ``perdure.runtime`` that imports ``perdure.actors`` (and nothing
imports it), so client applications never load the replay engine.

    perdure worker MODULE[:ATTR] ...   host the workflows and activities found there
    perdure server                     run a NATS server with JetStream (the embedded default)
    perdure replay ...                 check recorded histories against the current code
    perdure console ...                serve the web console (perdure.client.console)
    perdure start|list|history|...     the client verbs (perdure.client.cli)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from . import connect_options, logs
from .embedded import DEFAULT_PORT, EmbeddedServer, perdure_home, port_is_free, running_server
from .errors import PerdureError
from .settings import Settings
from .urls import redact_url

log = structlog.get_logger("perdure.daemon")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perdure", description="Durable execution on NATS JetStream")
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="host workflows and activities")
    worker.add_argument("targets", nargs="+", help="module, module:attr or path/to/file.py[:attr]")
    worker.add_argument(
        "--url",
        default=os.environ.get("PERDURE_URL"),
        help="NATS seed URLs, comma separated (default: the running or an embedded server)",
    )
    worker.add_argument("--namespace", default=os.environ.get("PERDURE_NAMESPACE", "perdure"))
    worker.add_argument(
        "--name", default=os.environ.get("PERDURE_NAME"), help="runtime name (stable across restarts)"
    )
    # None: Settings.from_env reads PERDURE_REPLICAS / PERDURE_PARTITIONS (a bad value is
    # a one-line error naming the variable, not a traceback from building this parser).
    worker.add_argument("--replicas", type=int, default=None, help="stream replicas (PERDURE_REPLICAS, 1)")
    worker.add_argument(
        "--partitions", type=int, default=None, help="inbox partitions (PERDURE_PARTITIONS, 12)"
    )
    worker.add_argument(
        "--concurrency", type=int, default=None, help="activity attempts at once, per activity"
    )
    worker.add_argument("--cache-size", type=int, default=None, help="live executions kept in memory")
    worker.add_argument(
        "--lease-ttl", type=float, default=None, help="seconds before a dead runtime's work moves"
    )
    worker.add_argument(
        "--connect-timeout",
        type=float,
        default=None,
        help="seconds the first connect to NATS may take (PERDURE_CONNECT_TIMEOUT, 10)",
    )
    worker.add_argument(
        "--health-port", type=int, default=None, help="serve /healthz, /readyz and /metrics on this port"
    )
    worker.add_argument(
        "--health-host",
        default=os.environ.get("PERDURE_HEALTH_HOST", "127.0.0.1"),
        help="address the health port listens on (default loopback; 0.0.0.0 for every interface)",
    )
    worker.add_argument(
        "--console-port", type=int, default=None, help="serve the web console on this port (127.0.0.1)"
    )
    worker.add_argument("--store-dir", default=None, help="embedded server's data directory")
    worker.add_argument("--log-level", default=None)
    worker.add_argument("--log-json", action="store_true")
    connect_options.add_arguments(worker)

    server = sub.add_parser("server", help="run a local NATS server with JetStream")
    server.add_argument("--port", type=int, default=DEFAULT_PORT)
    server.add_argument("--store-dir", default=str(perdure_home() / "nats"))

    replay = sub.add_parser("replay", help="replay recorded histories against the current code")
    replay.add_argument("targets", nargs="+", help="modules with the workflows, as for `worker`")
    replay.add_argument("--execution", action="append", default=[], help="execution id (repeatable)")
    replay.add_argument("--file", action="append", default=[], help="a history exported as JSON lines")
    replay.add_argument("--url", default=os.environ.get("PERDURE_URL"))
    replay.add_argument("--namespace", default=os.environ.get("PERDURE_NAMESPACE", "perdure"))
    connect_options.add_arguments(replay)

    console = sub.add_parser("console", help="serve the web console (needs perdure[console])")
    console.add_argument("--url", default=os.environ.get("PERDURE_URL"))
    console.add_argument("--namespace", default=os.environ.get("PERDURE_NAMESPACE", "perdure"))
    console.add_argument("--host", default="127.0.0.1", help="address to listen on")
    console.add_argument("--port", type=int, default=8240)
    connect_options.add_arguments(console)

    from perdure.client.cli import add_verbs  # start, list, signal...: a client, no engine

    add_verbs(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Exit codes: 0 stopped as asked; 1 the runtime failed or lost NATS for good (a
    supervisor should restart it), or a replayed history diverges; 2 a bad setting, module,
    URL or store (fix it, restarting will not help), or a replayed execution is not found."""
    args = _parser().parse_args(argv)
    logs.configure(getattr(args, "log_level", None), json=getattr(args, "log_json", None) or None)
    try:
        if args.command == "worker":
            sys.exit(_run(_worker(args)))
        elif args.command == "server":
            _serve_nats(args)
        elif args.command == "replay":
            sys.exit(_run(_replay(args)))
        elif args.command == "console":
            from perdure.client.console import run_console

            _run(run_console(args))
        elif getattr(args, "cli_verb", None):
            from perdure.client.cli import run as run_verb

            sys.exit(run_verb(args))
    except PerdureError as exc:
        message = " ".join(redact_url(str(exc)).split())  # one line, no secret
        print(f"perdure: {exc.code}: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every platform
        return asyncio.run(coro)
    return uvloop.run(coro)


def start_embedded_server(store_dir: str | None) -> tuple[str, EmbeddedServer | None]:
    """The embedded default: the server already running the store (``perdure server``, another
    runtime) if there is one, else a new one on port 4222 if free; data in ``~/.perdure/nats``.
    Returns its URL and the server if we started it (to stop with us)."""
    store = Path(store_dir) if store_dir else perdure_home() / "nats"
    running = running_server(store)
    if running is not None:
        log.info("embedded.reused", url=running.url, pid=running.pid, store_dir=str(store))
        return running.url, None
    port = DEFAULT_PORT if port_is_free(DEFAULT_PORT) else None
    server = EmbeddedServer(store_dir=store, port=port)
    server.start()
    server.advertise()
    return server.url, server


def tune_gc() -> None:
    """A runtime keeps thousands of long-lived objects (cached workflow instances), which the
    cyclic GC's default thresholds rescan constantly: 27% of a busy runtime's samples, and a
    106 ms pause per full collection at 10,000 cached executions (bench/PROFILE.md). Freeze
    what start-up made and collect far less often: +55% throughput measured (+118% with a full
    cache). The daemon owns its process, so it decides; an embedded ``Worker`` does not."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 1_000)


class StopSignals:
    """SIGTERM/SIGINT from the first instant: the first asks for a drain (read at start-up
    too), a second one exits at once."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.on_force: list[Any] = []  # called before a forced exit (stop the embedded server)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        if not self.requested.is_set():
            log.info("runtime.stop_requested", signal=signal.Signals(signum).name)
            self.requested.set()
            return
        log.warning("runtime.forced_exit", signal=signal.Signals(signum).name)
        for action in self.on_force:
            with contextlib.suppress(Exception):
                action()
        os._exit(128 + signum)

    async def race(self, coro: Any) -> bool:
        """Run ``coro`` unless a stop is asked first (then cancel it): True if it finished."""
        task = asyncio.ensure_future(coro)
        asked = asyncio.ensure_future(self.requested.wait())
        await asyncio.wait({task, asked}, return_when=asyncio.FIRST_COMPLETED)
        asked.cancel()
        if task.done():
            task.result()  # its error, if it failed
            return True
        # Cancel until it ends: on Python 3.11 a cancellation that meets a completing
        # ``asyncio.wait_for`` (nats-py's TCP connect) is swallowed (gh-86296); measured here,
        # one SIGTERM in a few left the connect loop running to its 10 s bound.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        with contextlib.suppress(BaseException):
            task.result()
        return False


async def _worker(args: argparse.Namespace) -> int:
    from perdure.actors import Registry, Worker

    stop = StopSignals()
    settings = Settings.from_env(
        url=args.url,
        namespace=args.namespace,
        name=args.name,
        replicas=args.replicas,
        partitions=args.partitions,
        activity_concurrency=args.concurrency,
        cache_size=args.cache_size,
        lease_ttl=args.lease_ttl,
        connect_timeout=args.connect_timeout,
        connect=connect_options.ConnectOptions.from_args(args),
    )
    registry = Registry.from_targets(args.targets)
    embedded: EmbeddedServer | None = None
    if not settings.url:
        url, embedded = await asyncio.to_thread(start_embedded_server, args.store_dir)
        settings = replace(settings, url=url)
        if embedded is not None:
            stop.on_force.append(embedded.kill)
    worker = Worker(registry=registry, settings=settings)
    health = None
    console = None
    started = False
    try:
        if args.health_port:  # /healthz answers during start-up too; /readyz once started
            health = await _serve_health(args.health_host, args.health_port, worker)
        log.info("runtime.connecting", url=redact_url(settings.url or ""), timeout=settings.connect_timeout)
        if not await stop.race(worker.start()):
            log.info("runtime.stopped_while_starting", runtime=settings.name)
            return 0
        started = True
        tune_gc()
        if args.console_port is not None:
            from perdure.client.console import start_for_worker

            console = await start_for_worker(settings, args.console_port)
        return await _serve(worker, stop)
    finally:
        if console is not None:
            await console.stop()
        clean = await _shutdown(worker, DRAIN_SECONDS, started=started)
        if health is not None:
            health.close()
        if embedded is not None:
            embedded.stop()
        if not clean:  # a stop stuck past its bound: asyncio.run would wait for it on exit
            sys.stderr.flush()
            os._exit(1)


DRAIN_SECONDS = 10.0  # a stopping runtime's own bound; the process is gone soon after


async def _serve(worker: Any, stop: StopSignals) -> int:
    """Until asked to stop (0), or a critical task fails or NATS closes the connection for
    good (1: a supervisor restarts the process; staying up doing nothing helps nobody)."""
    failed = asyncio.ensure_future(worker.wait_failed())
    stopped = asyncio.ensure_future(stop.requested.wait())
    closed = asyncio.ensure_future(worker.services.conn.wait_closed())
    await asyncio.wait({failed, stopped, closed}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if closed.done() and closed.result() is not None:
        log.error(
            "runtime.connection_closed",
            runtime=worker.settings.name,
            error=str(closed.result()),
            action="exiting with status 1 so that a supervisor restarts the runtime",
        )
        code = 1
    elif failed.done() and failed.result() is not None:
        log.error("runtime.failed", runtime=worker.settings.name, error=repr(failed.result()))
        code = 1
    for fut in (failed, stopped, closed):
        fut.cancel()
    return code


async def _shutdown(worker: Any, seconds: float, *, started: bool) -> bool:
    """Drain within ``seconds`` (plus the close); False if the stop is still stuck then (a
    dead connection, a step that ignores cancellation). A start that failed or was
    interrupted has only its connection to close."""
    if started:
        log.info("runtime.draining", runtime=worker.settings.name)
    stopping = asyncio.ensure_future(worker.stop(timeout=seconds))
    done, _ = await asyncio.wait({stopping}, timeout=seconds + 5.0)
    if not done:
        log.warning("runtime.drain_timeout", runtime=worker.settings.name, seconds=seconds + 5.0)
        return False
    if stopping.exception() is not None:
        log.warning("runtime.stop_failed", runtime=worker.settings.name, error=repr(stopping.exception()))
    return True


async def _serve_health(host: str, port: int, worker: Any) -> asyncio.Server:
    """``/healthz``: the process runs. ``/readyz``: connected, provisioned, serving.
    Loopback unless ``--health-host`` says otherwise: a probe runs beside the process.
    ``/metrics``: the runtime's Prometheus metrics (actors/metrics.py)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            line = (await reader.readline()).decode(errors="replace")
            path = line.split(" ")[1] if " " in line else "/"
            if path == "/metrics":
                return await _write_metrics(reader, writer, await worker.scrape_metrics())
            ok = path == "/healthz" or (path == "/readyz" and worker.ready.is_set())
            status = "200 OK" if ok else "503 Service Unavailable"
            body = b"ok\n" if ok else b"not ready\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, host, port)


async def _write_metrics(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> None:
    from perdure.actors.metrics import CONTENT_TYPE

    while (await reader.readline()).strip():  # the request's headers: closing with them unread resets
        pass
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n"
    writer.write(f"{head}Connection: close\r\n\r\n".encode() + body)
    await writer.drain()
    writer.close()


def _serve_nats(args: argparse.Namespace) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    server = EmbeddedServer(store_dir=Path(args.store_dir), port=args.port)
    server.start()
    server.advertise()
    print(f"NATS with JetStream at {server.url} (data in {args.store_dir}); Ctrl-C stops it", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.stop()


async def _replay(args: argparse.Namespace) -> int:
    from perdure.actors.replayer import replay_command

    return await replay_command(args)


if __name__ == "__main__":
    main()
