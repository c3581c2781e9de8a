"""``perdure`` as a user runs it (issue 10, items 4 to 7): real processes, bad URLs, signals
during start-up, credentials in logs, two servers on one store, bad settings and modules,
replay of a missing execution."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from password_server import PasswordServer

from perdure import Client, EmbeddedServer, Settings
from perdure.runtime.embedded import free_port
from perdure.runtime.provision import Provisioner

from support import TESTS_DIR, RuntimeProcess

BOUND = 2.0
SLACK = 4.0


def perdure(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen[str]:
    full_env = {**os.environ, "PYTHONPATH": str(TESTS_DIR), "PERDURE_LOG_LEVEL": "INFO", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "perdure.runtime.daemon", *args],
        env=full_env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str, str, float]:
    """Wait for the process (killing it past ``timeout``): code, stdout, stderr, seconds taken."""
    began = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running after {timeout} s:\n{err[-3000:]}")
    return proc.returncode, out, err, time.monotonic() - began


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


class Lines:
    """Reads a process's stderr in a thread; ``wait_for`` blocks until a line contains a text."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc, self.seen = proc, []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.seen.append(line)
                self._cond.notify_all()
        with self._cond:
            self.seen.append("")  # EOF
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        with self._cond:
            found = self._cond.wait_for(lambda: next((s for s in self.seen if text in s), None), timeout)
        if not found:
            raise AssertionError(f"never logged {text!r}:\n{''.join(self.seen)[-3000:]}")
        return found

    def text(self) -> str:
        with self._cond:
            return "".join(self.seen)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


# ------------------------------------------------------------------ connections


def test_worker_with_a_bad_url_exits_within_the_bound(home: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    proc = perdure(
        "worker", "workflows", "--url", url,
        env={"PERDURE_CONNECT_TIMEOUT": str(BOUND), "PERDURE_HOME": str(home), "PERDURE_LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    code, _, err, took = finish(proc, BOUND + SLACK + 10)
    assert code == 2, err
    assert took < BOUND + SLACK, took
    assert len(lines(err)) == 1, err
    assert url in err and "refused" in err, err


def test_sigterm_during_the_connect_phase_stops_the_worker(home: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    proc = perdure("worker", "workflows", "--url", url, env={"PERDURE_HOME": str(home)})  # 10 s bound
    out = Lines(proc)
    out.wait_for("runtime.connecting")
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("SIGTERM during the connect phase did not stop the worker")
    assert time.monotonic() - began < 3.0
    assert "Traceback" not in out.text(), out.text()


def test_sigint_during_the_connect_phase_stops_the_worker(home: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    proc = perdure("worker", "workflows", "--url", url, env={"PERDURE_HOME": str(home)})
    out = Lines(proc)
    out.wait_for("runtime.connecting")
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("SIGINT during the connect phase did not stop the worker")
    assert "Traceback" not in out.text(), out.text()


@pytest.fixture
def password_server(tmp_path: Path) -> Iterator[PasswordServer]:
    server = PasswordServer(tmp_path)
    yield server
    server.stop()


def test_logs_never_show_the_password_and_a_closed_connection_ends_the_worker(
    password_server: PasswordServer, home: Path
) -> None:
    """Credentials are redacted in every log line; when the server closes the runtime's
    connection for good (here: the password is rotated), the process exits non-zero with a
    clear line instead of staying up doing nothing."""
    runtime = RuntimeProcess(
        password_server.url(), "pw", "rt-pw", env={"PERDURE_HOME": str(home)}, extra_args=("--replicas", "1")
    ).start()
    try:
        started = runtime.wait_line("runtime.started")
        assert "s3cret" not in started and "alice:***@" in started, started
        password_server.reload("alice", "rotated")
        assert runtime.proc is not None
        try:
            code = runtime.proc.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail("the runtime stayed up on a connection closed for good:\n" + runtime.output()[-2000:])
        assert code not in (0, None), code
        assert "runtime.connection_closed" in runtime.output(), runtime.output()[-2000:]
        assert "s3cret" not in runtime.output()
    finally:
        runtime.kill()


def test_health_port_listens_on_loopback_only(nats_server: EmbeddedServer, namespace: str) -> None:
    port = free_port()
    runtime = RuntimeProcess(
        nats_server.url, namespace, f"rt-{namespace}", extra_args=("--health-port", str(port))
    ).start()
    try:
        listening = _listening_addresses(port)
        assert listening == {"127.0.0.1"}, listening
    finally:
        runtime.terminate()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (Linux /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


# ------------------------------------------------------------- one store, one server


def test_a_second_server_on_the_same_store_refuses(home: Path) -> None:
    port = free_port()
    store = home / "nats"
    first = perdure("server", "--port", str(port), "--store-dir", str(store), env={"PERDURE_HOME": str(home)})
    try:
        assert first.stdout is not None
        assert "NATS with JetStream at" in first.stdout.readline()
        other_port = free_port()
        second = perdure(
            "server", "--port", str(other_port), "--store-dir", str(store), env={"PERDURE_HOME": str(home)}
        )
        code, out, err, _ = finish(second, 20)
        assert code == 2, (out, err)
        assert "NATS with JetStream at" not in out
        assert "in use" in err and f":{port}" in err, err
        assert first.poll() is None  # the live server is untouched
        # Same port, another store: the busy port is named, not papered over.
        third = perdure(
            "server", "--port", str(port), "--store-dir", str(home / "other"), env={"PERDURE_HOME": str(home)}
        )
        code, out, err, _ = finish(third, 20)
        assert code == 2 and "NATS with JetStream at" not in out, (out, err)
        assert f"port {port}" in err, err
    finally:
        first.send_signal(signal.SIGTERM)
        finish(first, 20)


def test_a_worker_without_url_uses_the_running_server(home: Path) -> None:
    port = free_port()
    env = {"PERDURE_HOME": str(home)}
    server = perdure("server", "--port", str(port), env=env)  # the default store: <home>/nats
    try:
        assert server.stdout is not None
        assert "NATS with JetStream at" in server.stdout.readline()
        worker = perdure("worker", "workflows", "--namespace", "solo", env=env)
        out = Lines(worker)
        started = out.wait_for("runtime.started", timeout=30)
        assert f"nats://127.0.0.1:{port}" in started, started
        assert "embedded.started" not in out.text()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    finally:
        server.send_signal(signal.SIGTERM)
        finish(server, 20)


# ----------------------------------------------------------- bad settings and modules


def test_a_bad_setting_is_one_line_naming_it(home: Path) -> None:
    proc = perdure("worker", "workflows", env={"PERDURE_REPLICAS": "abc", "PERDURE_HOME": str(home)})
    code, _, err, _ = finish(proc, 30)
    assert code == 2, err
    assert len(lines(err)) == 1 and "PERDURE_REPLICAS" in err and "abc" in err, err


@pytest.mark.parametrize(
    ("source", "expect"),
    [
        ("x = 1\ndef broken(:\n    pass\n", ":2"),
        ("import os\nimport no_such_module_here\n", ":2"),
    ],
    ids=["syntax-error", "missing-import"],
)
def test_a_broken_module_is_one_line_naming_file_and_line(
    tmp_path: Path, home: Path, source: str, expect: str
) -> None:
    (tmp_path / "broken_wf.py").write_text(source)
    for target in ("broken_wf", str(tmp_path / "broken_wf.py")):
        proc = perdure("worker", target, env={"PERDURE_HOME": str(home)}, cwd=tmp_path)
        code, _, err, _ = finish(proc, 30)
        assert code == 2, err
        assert len(lines(err)) == 1, err
        assert f"broken_wf.py{expect}" in err, err


# ------------------------------------------------------------------------- replay


async def test_replay_of_a_missing_execution_says_not_found(
    nats_server: EmbeddedServer, namespace: str, client: Client
) -> None:
    await Provisioner(client.conn, Settings(url=nats_server.url, namespace=namespace)).provision()
    proc = perdure(
        "replay", "workflows", "--execution", "nope", "--url", nats_server.url, "--namespace", namespace
    )
    code, out, err, _ = await asyncio.to_thread(finish, proc, 30)
    assert code == 2, (out, err)
    assert "not found" in out.lower() and "DIVERGES" not in out, out


def test_kubernetes_probes_reach_the_health_port() -> None:
    """The kubelet probes the pod's IP, not loopback: the manifest must widen the health host."""
    import yaml

    manifest = TESTS_DIR.parent / "deploy" / "kubernetes" / "runtime-deployment.yaml"
    deployment = next(d for d in yaml.safe_load_all(manifest.read_text()) if d and d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "httpGet" in container["readinessProbe"]
    command = container["command"]
    assert command[command.index("--health-host") + 1] == "0.0.0.0", command
