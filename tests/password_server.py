"""nats-server with a user and password (a config file, reloadable): for tests of credentials."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

from perdure.runtime.embedded import find_nats_server, free_port


class PasswordServer:
    """nats-server with a user and password, JetStream on, from a config file (reloadable)."""

    def __init__(self, tmp: Path, user: str = "alice", password: str = "s3cret") -> None:
        self.tmp, self.port = tmp, free_port()
        self.conf = tmp / "nats.conf"
        self.write(user, password)
        self.proc = subprocess.Popen(
            [find_nats_server(), "-c", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                if s.recv(4).startswith(b"INFO"):
                    return
            time.sleep(0.05)
        raise RuntimeError("nats-server with a password did not start")

    def write(self, user: str, password: str) -> None:
        self.conf.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            f'jetstream {{ store_dir: "{self.tmp / "store"}" }}\n'
            f'authorization {{ user: "{user}", password: "{password}" }}\n'
        )

    def url(self, user: str = "alice", password: str = "s3cret") -> str:
        return f"nats://{user}:{password}@127.0.0.1:{self.port}"

    def reload(self, user: str, password: str) -> None:
        """Rotate the credentials: the server closes connections using the old ones."""
        self.write(user, password)
        self.proc.send_signal(1)  # SIGHUP: reload the configuration

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
