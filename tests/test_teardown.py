"""Issue 10 item 8: a workflow instance that is dropped (dormancy, LRU eviction, worker stop,
SIGTERM) is torn down on purpose: none of its code runs (no ``finally``, no activity called
from one), nothing is logged as an error, and the execution later completes correctly."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from teardown_workflows import SIDE_EFFECTS, guarded, guarded_sleep, noted, record, summed

from perdure import Client, EmbeddedServer, Settings, Worker
from perdure.actors import abandon
from perdure.runtime.events import SignalReceived, TimerStarted, WorkflowStarted

from support import RuntimeProcess, watch_history


@pytest.fixture
def side_effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "side-effects.txt"
    monkeypatch.setenv(SIDE_EFFECTS, str(path))
    return path


@pytest.fixture
def unraisable(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Exceptions Python could not raise anywhere (in finalizers: a coroutine closed by the GC)."""
    seen: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    yield seen


def _started(execution_id: str) -> Any:
    return lambda w: any(isinstance(e, WorkflowStarted) for e in w.events(execution_id))


def _timer(execution_id: str) -> Any:
    return lambda w: any(isinstance(e, TimerStarted) for e in w.events(execution_id))


def _no_errors(stderr: str) -> None:
    for word in ("Traceback", "[error", "Exception ignored", "aclose", "nondeterministic"):
        assert word not in stderr, stderr


@pytest.mark.parametrize("abandon_supported", [True, False], ids=["abandoned", "closed"])
async def test_dormant_instances_dropped_run_no_user_code(
    abandon_supported: bool,
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    client: Client,
    side_effects: Path,
    unraisable: list[Any],
    capfd: pytest.CaptureFixture[str],
) -> None:
    # "closed": where frames cannot be abandoned, coroutines are closed with every workflow
    # call refused; the ``finally`` blocks here guard their side effects with is_replaying().
    monkeypatch.setattr(abandon, "_SUPPORTED", abandon_supported)
    async with Worker([guarded, summed, record], settings=settings) as worker:
        async with watch_history(client) as watch:
            first = await client.start(guarded, 1, id="guarded-1")
            second = await client.start(summed, 2, id="summed-1")
            await second.signal("value", 5)
            await watch.wait_for(_started("guarded-1"))
            await watch.wait_for(lambda w: any(isinstance(e, SignalReceived) for e in w.events("summed-1")))
        await worker.wait_quiet()
        # Both wait for a signal only: dormant, so they left the cache and were dropped.
        assert worker.cached_executions == 0
        gc.collect()
        assert noted() == [], "user code ran when the instance was dropped"
        await first.signal("go")
        await second.signal("value", 6)
        assert await first.result(timeout=30) == "done-1"
        assert await second.result(timeout=30) == 11
        await worker.wait_quiet()
    gc.collect()
    assert collections.Counter(noted()) == {
        "finally:1": 1,
        "activity:cleanup-1": 1,
        "agen-finally:summed-1": 1,
        "finally:summed-1": 1,
    }
    assert unraisable == []
    _no_errors(capfd.readouterr().err)


async def test_evicted_instances_run_no_user_code(
    settings: Settings,
    client: Client,
    side_effects: Path,
    unraisable: list[Any],
    capfd: pytest.CaptureFixture[str],
) -> None:
    one = dataclasses.replace(settings, cache_size=1)
    async with Worker([guarded_sleep, record], settings=one) as worker:
        async with watch_history(client) as watch:
            a = await client.start(guarded_sleep, 2.5, id="lru-a")
            await watch.wait_for(_timer("lru-a"))
            await worker.wait_quiet()
            b = await client.start(guarded_sleep, 2.5, id="lru-b")
            await watch.wait_for(_timer("lru-b"))
        await worker.wait_quiet()
        assert worker.cached_executions == 1  # lru-a was evicted for lru-b
        gc.collect()
        assert noted() == [], "user code ran when the instance was evicted"
        assert await a.result(timeout=30) == "slept-lru-a"
        assert await b.result(timeout=30) == "slept-lru-b"
        await worker.wait_quiet()
    gc.collect()
    assert collections.Counter(noted()) == {
        "finally:lru-a": 1,
        "activity:cleanup-lru-a": 1,
        "finally:lru-b": 1,
        "activity:cleanup-lru-b": 1,
    }
    assert unraisable == []
    _no_errors(capfd.readouterr().err)


async def test_worker_stop_runs_no_user_code(
    settings: Settings,
    client: Client,
    side_effects: Path,
    unraisable: list[Any],
    capfd: pytest.CaptureFixture[str],
) -> None:
    async with Worker([guarded_sleep, record], settings=settings), watch_history(client) as watch:
        handle = await client.start(guarded_sleep, 2.0, id="stopped")
        await watch.wait_for(_timer("stopped"))
    gc.collect()
    assert noted() == [], "user code ran when the worker stopped"
    async with Worker([guarded_sleep, record], settings=settings) as worker:
        assert await handle.result(timeout=30) == "slept-stopped"
        await worker.wait_quiet()
    gc.collect()
    assert collections.Counter(noted()) == {"finally:stopped": 1, "activity:cleanup-stopped": 1}
    assert unraisable == []
    _no_errors(capfd.readouterr().err)


async def test_sigterm_runs_no_user_code_and_logs_clean_json(
    nats_server: EmbeddedServer, namespace: str, client: Client, side_effects: Path
) -> None:
    env = {SIDE_EFFECTS: str(side_effects)}
    first = RuntimeProcess(
        nats_server.url,
        namespace,
        "sigterm-1",
        targets=("teardown_workflows",),
        extra_args=("--log-json",),
        env=env,
    )
    second = RuntimeProcess(nats_server.url, namespace, "sigterm-2", targets=("teardown_workflows",), env=env)
    await first.astart()
    try:
        async with watch_history(client) as watch:
            handles = []
            for i in range(5):
                handles.append(await client.start(guarded, i, id=f"g-{i}"))
                handles.append(await client.start(summed, 2, id=f"s-{i}"))
                handles.append(await client.start(guarded_sleep, 6.0, id=f"t-{i}"))
                await client.signal(f"s-{i}", "value", i)
            for i in range(5):
                await watch.wait_for(_started(f"g-{i}"))
                await watch.wait_for(_timer(f"t-{i}"))
                await watch.wait_for(
                    lambda w, i=i: any(isinstance(e, SignalReceived) for e in w.events(f"s-{i}"))
                )
        assert await first.aterminate() == 0
        output = first.output()
        assert noted() == [], "user code ran when the runtime stopped"
        _no_errors(output)
        for line in output.splitlines():
            json.loads(line)  # --log-json: every line is a JSON object, no stray traceback
        await second.astart()
        for i in range(5):
            await client.signal(f"g-{i}", "go")
            await client.signal(f"s-{i}", "value", 10)
        results = await asyncio.gather(*[h.result(timeout=60) for h in handles])
    finally:
        first.kill()
        second.kill()
    expected: list[object] = []
    for i in range(5):
        expected += [f"done-{i}", i + 10, f"slept-t-{i}"]
    assert results == expected
    assert collections.Counter(noted()) == {
        line: 1
        for i in range(5)
        for line in (
            f"finally:{i}",
            f"activity:cleanup-{i}",
            f"agen-finally:s-{i}",
            f"finally:s-{i}",
            f"finally:t-{i}",
            f"activity:cleanup-t-{i}",
        )
    }
