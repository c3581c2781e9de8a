"""Perdure itself, as one more system in the table.

The driver is bench/peers/perdure_peer.py, run with the interpreter running run.py (the
project venv, where perdure is installed editable): it starts a nats-server
(perdure.EmbeddedServer, file storage in its workdir), one `perdure worker` runtime process
hosting bench/peers/perdure_app.py, and drives them with perdure.Client. Nothing to install.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .base import PeerScript, Unavailable


class Perdure(PeerScript):
    name = "perdure"
    script = "perdure_peer.py"

    def python(self) -> Path:
        return Path(sys.executable)  # the project venv: perdure is installed there

    def setup(self) -> None:
        probe = subprocess.run(
            [
                str(self.python()),
                "-c",
                "import perdure, uvloop; from perdure.runtime.embedded import find_nats_server; find_nats_server()",
            ],
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:
            raise Unavailable(
                f"perdure is not importable by {self.python()} (run bench/run.py from the project venv): "
                + probe.stderr.strip()[-300:]
            )
