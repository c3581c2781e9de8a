"""Test helpers: runtime daemons as real processes, and watching history as it is written."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Self

import nats
import pytest

from perdure import Client
from perdure.runtime import codec
from perdure.runtime.events import ActivityCompleted, ActivityConcluded, AnyEvent, HistoryStep, TimerFired
from perdure.runtime.nats_client import StoredMessage

TESTS_DIR = Path(__file__).resolve().parent


class RuntimeProcess:
    """``perdure worker`` in a child process; ``start()`` returns when it logged ``runtime.started``."""

    def __init__(
        self,
        url: str,
        namespace: str,
        name: str,
        *,
        targets: tuple[str, ...] = ("workflows",),
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.url, self.namespace, self.name = url, namespace, name
        self.targets, self.extra_args = targets, extra_args
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._started = threading.Event()
        self._seen = threading.Condition()

    def start(self, timeout: float = 20.0) -> RuntimeProcess:
        env = {**os.environ, "PYTHONPATH": str(TESTS_DIR), "PERDURE_LOG_LEVEL": "INFO", **self.env}
        args = [
            sys.executable, "-m", "perdure.runtime.daemon", "worker", *self.targets,
            "--url", self.url, "--namespace", self.namespace, "--name", self.name, *self.extra_args,
        ]  # fmt: skip
        self._started.clear()
        self.proc = subprocess.Popen(
            args,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        if not self._started.wait(timeout):
            self.kill()
            raise RuntimeError(f"runtime {self.name} did not start:\n" + "".join(self.lines[-30:]))
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()
            if "runtime.started" in line:
                self._started.set()

    def wait_line(self, text: str, timeout: float = 20.0) -> str:
        """Block until the runtime logs a line containing ``text``; return it."""
        with self._seen:
            found = self._seen.wait_for(lambda: next((ln for ln in self.lines if text in ln), None), timeout)
        if not found:
            raise TimeoutError(f"runtime {self.name} never logged {text!r}")
        return found

    async def await_line(self, text: str, timeout: float = 20.0) -> str:
        return await asyncio.to_thread(self.wait_line, text, timeout)

    async def astart(self, timeout: float = 20.0) -> RuntimeProcess:
        return await asyncio.to_thread(self.start, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing handed over."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM: the graceful drain."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    async def aterminate(self, timeout: float = 20.0) -> int:
        return await asyncio.to_thread(self.terminate, timeout)

    def output(self) -> str:
        return "".join(self.lines)


class HistoryWatch:
    """Collects the history steps of a namespace as they are appended (a core subscription)."""

    def __init__(self) -> None:
        self.steps: dict[str, list[HistoryStep]] = {}
        self._changed = asyncio.Condition()

    def events(self, execution_id: str) -> list[AnyEvent]:
        out: list[AnyEvent] = []
        for step in self.steps.get(execution_id, []):
            out.extend(step.inputs)
            out.extend(step.decisions)
        return out

    async def wait_for(self, predicate: Callable[[HistoryWatch], bool], timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    async def _add(self, subject: str, data: bytes) -> None:
        execution_id = subject.rsplit(".", 1)[1]
        step = codec.history_step.decode(data)
        self.steps.setdefault(execution_id, []).append(step)
        async with self._changed:
            self._changed.notify_all()


class SubjectSpy:
    """The messages on ``subjects`` as the server routes them, seen from a plain nats-py
    connection of its own (``async with``); a subclass says what it keeps (``on_message``).

    Live when entered: two flushes, since nats-py's PING can overtake a SUB still in its send
    buffer, so one PONG does not prove the server has the SUB (``Connection.flush``). On
    exit, what was published before has been seen."""

    def __init__(self, url: str, subjects: list[str]) -> None:
        self.url = url
        self.subjects = subjects

    async def on_message(self, msg: nats.aio.msg.Msg) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._nc = await nats.connect(self.url)
        for subject in self.subjects:
            await self._nc.subscribe(subject, cb=self.on_message)
        await self._nc.flush()
        await self._nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._nc.flush()
        await self._nc.drain()


@contextlib.asynccontextmanager
async def watch_history(client: Client) -> AsyncIterator[HistoryWatch]:
    watch = HistoryWatch()
    sub, messages = await client.conn.subscribe(f"{client.names.namespace}.history.*")  # live now

    async def pump() -> None:
        async for message in messages:
            await watch._add(message.subject, message.data)

    task = asyncio.ensure_future(pump())
    try:
        yield watch
    finally:
        task.cancel()
        await sub.stop()


def assert_applied_once(events: list[object], execution_id: str) -> None:
    """No activity result applied twice; every activity closed exactly once."""
    completed = collections.Counter(e.seq for e in events if isinstance(e, ActivityCompleted))
    closed = collections.Counter(e.seq for e in events if isinstance(e, ActivityConcluded))
    assert all(n == 1 for n in completed.values()), (execution_id, completed)
    assert all(n == 1 for n in closed.values()), (execution_id, closed)
    assert set(completed) == set(closed), execution_id


# ------------------------------------------------------------ timers: which path fired them


class MarkerWatch:
    """The expiry markers (``Nats-Marker-Reason: MaxAge``) of a namespace's timer keys, each
    stamped with how many history steps of its execution ``history`` had seen when it came.

    A timer fired from the owning runtime's memory is in history before its key would expire,
    and its key is purged once the firing is absorbed, so no marker ever follows; a timer
    fired by the KV backstop has its marker seen first. ``fired_from_memory`` tells the two
    apart by the order of events, not by a wall-clock window.
    """

    def __init__(self, history: HistoryWatch) -> None:
        self.history = history
        self.markers: dict[tuple[str, str], int] = {}  # (execution, timer) -> steps seen then
        self.changed = asyncio.Condition()

    async def _on_entry(self, msg: StoredMessage) -> None:
        if msg.headers.get("Nats-Marker-Reason") != "MaxAge":
            return
        parts = msg.subject.split(".", 5)  # $KV.<bucket>.<partition>.<execution>.<run>.<timer>
        if len(parts) < 6:
            return
        execution_id, timer = parts[3], parts[5]
        self.markers[(execution_id, timer)] = len(self.history.steps.get(execution_id, []))
        async with self.changed:
            self.changed.notify_all()

    async def wait_for(self, predicate: Callable[[MarkerWatch], bool], timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: predicate(self))

    def fired_from_memory(self, execution_id: str, timer: str) -> bool:
        """``timer`` fired (in history) before any expiry marker of its key was stored."""
        steps = self.history.steps.get(execution_id, [])
        fired_at = next(
            (
                i
                for i, s in enumerate(steps)
                if any(isinstance(e, TimerFired) and e.timer == timer for e in s.inputs)
            ),
            None,
        )
        if fired_at is None:
            return False
        seen = self.markers.get((execution_id, timer))
        return seen is None or fired_at < seen


@contextlib.asynccontextmanager
async def watch_timer_markers(client: Client, history: HistoryWatch) -> AsyncIterator[MarkerWatch]:
    markers = MarkerWatch(history)
    bucket = client.names.timers_bucket
    sub = await client.conn.watch(
        f"KV_{bucket}", f"$KV.{bucket}.>", markers._on_entry, last_per_subject=False
    )
    try:
        yield markers
    finally:
        await sub.stop()


async def run_perdure(
    *args: str, url: str, namespace: str, timeout: float = 60.0, **env: str
) -> tuple[int, str, str]:
    """A ``perdure`` command as a process of its own, against ``url`` and ``namespace`` (more
    ``PERDURE_*`` variables in ``env``): its exit code, stdout and stderr. One still running
    after ``timeout`` seconds is killed and the test fails with the end of its stderr."""
    variables = {**os.environ, "PERDURE_URL": url, "PERDURE_NAMESPACE": namespace, **env}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "perdure.runtime.daemon", *args,
        env=variables, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        pytest.fail(f"perdure {' '.join(args)} still running after {timeout} s: {err.decode()[-2000:]}")
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
