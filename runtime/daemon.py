"""``perdure``: the runtime daemon's command line, and the composition root.

This is the one module of ``perdure.runtime`` that imports ``perdure.actors`` (and nothing
imports it), so client applications never load the replay engine.

    perdure worker MODULE[:ATTR] ...   host the workflows and activities found there
    perdure server                     run a NATS server with JetStream (the embedded default)
    perdure replay ...                 check recorded histories against the current code
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import sys
from pathlib import Path
from typing import Any

import structlog

from . import connect_options, logs
from .embedded import DEFAULT_PORT, EmbeddedServer, perdure_home, port_is_free
from .errors import PerdureError
from .settings import Settings

log = structlog.get_logger("perdure.daemon")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perdure", description="Durable execution on NATS JetStream")
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="host workflows and activities")
    worker.add_argument("targets", nargs="+", help="module, module:attr or path/to/file.py[:attr]")
    worker.add_argument(
        "--url",
        default=os.environ.get("PERDURE_URL"),
        help="NATS seed URLs, comma separated (default: start an embedded server)",
    )
    worker.add_argument("--namespace", default=os.environ.get("PERDURE_NAMESPACE", "perdure"))
    worker.add_argument(
        "--name", default=os.environ.get("PERDURE_NAME"), help="runtime name (stable across restarts)"
    )
    worker.add_argument("--replicas", type=int, default=int(os.environ.get("PERDURE_REPLICAS", "1")))
    worker.add_argument("--partitions", type=int, default=int(os.environ.get("PERDURE_PARTITIONS", "12")))
    worker.add_argument(
        "--concurrency", type=int, default=None, help="activity attempts at once, per activity"
    )
    worker.add_argument("--cache-size", type=int, default=None, help="live executions kept in memory")
    worker.add_argument(
        "--lease-ttl", type=float, default=None, help="seconds before a dead runtime's work moves"
    )
    worker.add_argument(
        "--health-port", type=int, default=None, help="serve /healthz and /readyz on this port"
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
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logs.configure(getattr(args, "log_level", None), json=getattr(args, "log_json", None) or None)
    try:
        if args.command == "worker":
            _run(_worker(args))
        elif args.command == "server":
            _serve_nats(args)
        elif args.command == "replay":
            sys.exit(_run(_replay(args)))
    except PerdureError as exc:
        print(f"perdure: {exc.code}: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every platform
        return asyncio.run(coro)
    return uvloop.run(coro)


def start_embedded_server(store_dir: str | None) -> EmbeddedServer:
    """The embedded default: port 4222 if free, the data in ``~/.perdure/nats``."""
    port = DEFAULT_PORT if port_is_free(DEFAULT_PORT) else None
    server = EmbeddedServer(store_dir=store_dir or perdure_home() / "nats", port=port)
    server.start()
    server.advertise()
    return server


def tune_gc() -> None:
    """A runtime keeps thousands of long-lived objects (cached workflow instances), which the
    cyclic GC's default thresholds rescan constantly: 27% of a busy runtime's samples, and a
    106 ms pause per full collection at 10,000 cached executions (bench/PROFILE.md). Freeze
    what start-up made and collect far less often: +55% throughput measured (+118% with a full
    cache). The daemon owns its process, so it decides; an embedded ``Worker`` does not."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 1_000)


async def _worker(args: argparse.Namespace) -> None:
    from perdure.actors import Registry, Worker

    registry = Registry.from_targets(args.targets)
    embedded = None if args.url else start_embedded_server(args.store_dir)
    settings = Settings.from_env(
        url=args.url or (embedded.url if embedded else None),
        namespace=args.namespace,
        name=args.name,
        replicas=args.replicas,
        partitions=args.partitions,
        activity_concurrency=args.concurrency,
        cache_size=args.cache_size,
        lease_ttl=args.lease_ttl,
        connect=connect_options.ConnectOptions.from_args(args),
    )
    worker = Worker(registry=registry, settings=settings)
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    health = await _serve_health(args.health_port, worker) if args.health_port else None
    try:
        await worker.start()
        failed = asyncio.ensure_future(worker.wait_failed())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({failed, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if failed.done() and failed.result() is not None:
            log.error("runtime.failed", error=repr(failed.result()))
        for fut in (failed, stopped):
            fut.cancel()
    finally:
        log.info("runtime.draining", runtime=settings.name)
        await worker.stop()
        if health is not None:
            health.close()
        if embedded is not None:
            embedded.stop()


async def _serve_health(port: int, worker: Any) -> asyncio.Server:
    """``/healthz``: the process runs. ``/readyz``: connected, provisioned, serving."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            line = (await reader.readline()).decode(errors="replace")
            path = line.split(" ")[1] if " " in line else "/"
            ok = path == "/healthz" or (path == "/readyz" and worker.ready.is_set())
            status = "200 OK" if ok else "503 Service Unavailable"
            body = b"ok\n" if ok else b"not ready\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "0.0.0.0", port)


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
