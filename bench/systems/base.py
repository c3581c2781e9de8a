"""What a benchmarked system is, to bench/run.py: a name, setup() and run().

setup() installs whatever the system needs (idempotently, cached under bench/.peers) or
raises Unavailable with the reason; run() performs the workloads and returns the JSON
document its driver wrote ({"workloads": {name: {"reps": [...], ...}}, "versions": ...}).
Most systems are a PeerScript: a driver in bench/peers/ run by the interpreter of the
system's own virtualenv, so no peer's dependencies ever meet the project's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent
PEERS_HOME = BENCH / ".peers"  # gitignored: venvs, npm folders, caches


PROGRESS = re.compile(r"^\[\w+\] \w+ done in ")  # what common.Runner prints per workload


class Unavailable(Exception):
    """This system cannot run here; the message says why. The others still run."""


@dataclass
class RunConfig:
    n: int
    reps: int
    pending: int
    max_seconds: float
    workloads: list[str]
    timeout_s: float  # one system's whole run; past it we stop it and keep what the others gave
    extra: dict[str, Any] = field(default_factory=dict)


class System:
    name = "system"

    def setup(self) -> None:
        """Install what is missing. Raise Unavailable if that cannot be done."""

    def run(self, cfg: RunConfig) -> dict[str, Any]:
        raise NotImplementedError


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def sh(cmd: list[str], cwd: Path | None = None, timeout: float = 1800) -> None:
    """Run an install step; its output goes to a log so a failure can say why."""
    PEERS_HOME.mkdir(parents=True, exist_ok=True)
    logfile = PEERS_HOME / "install.log"
    with logfile.open("ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        fh.flush()
        r = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    if r.returncode != 0:
        raise Unavailable(f"install step failed ({' '.join(cmd[:4])} ...): see {logfile}")


def ensure_venv(path: Path, packages: list[str]) -> Path:
    """A virtualenv at `path` holding `packages`; reinstalled only when the list changes.
    Returns its python. Built from the interpreter running run.py (a venv of a venv is
    fine: venv follows the base interpreter)."""
    marker = path / ".bench-installed"
    wanted = "\n".join(packages)
    python = path / "bin" / "python"
    if marker.exists() and marker.read_text() == wanted and python.exists():
        return python
    log(f"installing {', '.join(packages)} into {path.relative_to(BENCH)} ...")
    if not python.exists():
        sh([sys.executable, "-m", "venv", str(path)])
    sh([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages])
    marker.write_text(wanted)
    return python


def reap_servers(pidfile: Path) -> None:
    """Kill servers a driver started but could not stop (it was killed itself)."""
    if not pidfile.exists():
        return
    for line in pidfile.read_text().splitlines():
        pid_s, _, name = line.partition(" ")
        with contextlib.suppress(OSError, ValueError):
            cmdline = Path(f"/proc/{pid_s}/cmdline").read_bytes().decode(errors="replace")
            if name and name in cmdline:  # still ours, not a recycled pid
                os.killpg(int(pid_s), signal.SIGKILL)
                log(f"killed leftover server {name} (pid {pid_s})")


class PeerScript(System):
    """A driver script in bench/peers/ run by this system's own interpreter."""

    script = ""  # file name in bench/peers/
    packages: list[str] = []  # pip packages of the system's venv

    @property
    def venv(self) -> Path:
        return PEERS_HOME / self.name

    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def setup(self) -> None:
        ensure_venv(self.venv, self.packages)

    def run(self, cfg: RunConfig) -> dict[str, Any]:
        workdir = Path(tempfile.mkdtemp(prefix=f"perdure-bench-{self.name}-"))
        out = workdir / "result.json"
        cmd = [
            str(self.python()),
            str(BENCH / "peers" / self.script),
            "--workdir",
            str(workdir),
            "--out",
            str(out),
        ]
        cmd += ["--n", str(cfg.n), "--reps", str(cfg.reps), "--pending", str(cfg.pending)]
        cmd += ["--max-seconds", str(cfg.max_seconds), "--workloads", ",".join(cfg.workloads)]
        try:
            self._run_child(cmd, cfg.timeout_s, workdir)
            if not out.exists():
                raise Unavailable(f"driver wrote no result; its log: {workdir / 'driver.log'}")
            return json.loads(out.read_text())
        finally:
            reap_servers(workdir / "server.pids")
            keep = os.environ.get("BENCH_KEEP_WORKDIR")
            if not keep:
                shutil.rmtree(workdir, ignore_errors=True)

    def _run_child(self, cmd: list[str], timeout: float, workdir: Path) -> None:
        """Run the driver, its stderr both shown and logged; on timeout SIGTERM it (so it
        stops its servers), then SIGKILL."""
        with (workdir / "driver.log").open("wb") as logf:
            proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=logf, start_new_session=True)
            deadline = time.monotonic() + timeout
            try:
                _pump(proc, logf, deadline)
            finally:
                if proc.poll() is None:
                    log(f"{self.name}: over {timeout:.0f} s, stopping it")
                    _stop(proc)


def _pump(proc: subprocess.Popen, logf, deadline: float) -> None:
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    while proc.poll() is None and time.monotonic() < deadline:
        _copy(proc.stderr, logf)
        time.sleep(0.2)
    _copy(proc.stderr, logf)


def _copy(src, logf) -> None:
    with contextlib.suppress(BlockingIOError, TypeError):
        data = src.read()
        if data:
            logf.write(data)
            logf.flush()
            # Progress lines only: library warnings stay in the log.
            for line in data.decode(errors="replace").splitlines():
                if PROGRESS.match(line):
                    print(f"  {line}", file=sys.stderr, flush=True)


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
