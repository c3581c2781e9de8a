"""Versioning: ``workflow.patched()`` lets new code branch while old executions replay the old
path; ``perdure replay`` flags an unguarded incompatible change where it diverges."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import msgspec

from perdure import ActivityContext, Client, Settings, Worker, activity, make_async, workflow
from perdure.actors.registry import Registry
from perdure.actors.replayer import replay_steps
from perdure.runtime.events import ActivityScheduled, PatchMarked

tokens: asyncio.Queue[str] = asyncio.Queue()


@activity
async def step_one(x: int) -> int:
    return x + 1


@activity
async def audit(x: int) -> str:
    return f"audited {x}"


@activity
async def hold(x: int, ctx: ActivityContext) -> int:
    await tokens.put(ctx.token)
    return make_async()


@workflow(name="versioned")
async def versioned_v1(x: int) -> str:
    y = await step_one(x)
    return f"v1 {await hold(y)}"


@workflow(name="versioned")
async def versioned_v2(x: int) -> str:
    if workflow.patched("audit-first"):
        await audit(x)
    y = await step_one(x)
    return f"{'patched' if workflow.patched('audit-first') else 'old'} {await hold(y)}"


@workflow(name="versioned")
async def versioned_v3(x: int) -> str:  # the same change, unguarded
    await audit(x)
    y = await step_one(x)
    return f"v3 {await hold(y)}"


ACTIVITIES = [step_one, audit, hold]


def scheduled(events: list[object]) -> list[str]:
    return [e.name for e in events if isinstance(e, ActivityScheduled)]


async def test_patched_old_executions_keep_the_old_path(settings: Settings, client: Client) -> None:
    async with Worker([versioned_v1, *ACTIVITIES], settings=settings):
        old = await client.start(versioned_v1, 1, id="old-one")
        old_token = await asyncio.wait_for(tokens.get(), 30)
    recorded = await old.history_steps()

    # Deploy v2: the old execution replays the old path; a new one takes the new path.
    async with Worker([versioned_v2, *ACTIVITIES], settings=settings):
        await client.complete_activity(old_token, 7)
        assert await old.result(timeout=30) == "old 7"
        new = await client.start(versioned_v2, 1, id="new-one")
        await client.complete_activity(await asyncio.wait_for(tokens.get(), 30), 8)
        assert await new.result(timeout=30) == "patched 8"
    assert scheduled(await old.history()) == ["step_one", "hold"]
    new_events = await new.history()
    assert scheduled(new_events) == ["audit", "step_one", "hold"]
    assert [e.patch for e in new_events if isinstance(e, PatchMarked)] == ["audit-first"]

    # The replay check: v2 replays the old history; unguarded v3 diverges, and says where.
    assert replay_steps(Registry([versioned_v2, *ACTIVITIES]), "old-one", recorded).ok
    report = replay_steps(Registry([versioned_v3, *ACTIVITIES]), "old-one", recorded)
    assert not report.ok
    assert "step 0" in report.divergence
    assert "history has ActivityScheduled(seq=1, name='step_one'" in report.divergence
    assert "the code issued ActivityScheduled(seq=1, name='audit'" in report.divergence


async def test_replay_cli_reports_the_divergence(settings: Settings, client: Client, tmp_path: Path) -> None:
    async with Worker([versioned_v1, *ACTIVITIES], settings=settings):
        handle = await client.start(versioned_v1, 2, id="cli-one")
        await asyncio.wait_for(tokens.get(), 30)
    history = tmp_path / "cli-one.jsonl"
    history.write_bytes(b"\n".join(msgspec.json.encode(s) for s in await handle.history_steps()))
    module = tmp_path / "v3.py"
    module.write_text(Path(__file__).read_text())  # this module, whose v3 is the incompatible change
    tests_dir = str(Path(__file__).parent)

    def run(attr: str) -> subprocess.CompletedProcess[str]:
        command = [
            sys.executable,
            "-m",
            "perdure.runtime.daemon",
            "replay",
            f"{module}:{attr}",
            "--file",
            str(history),
        ]
        env = {**os.environ, "PYTHONPATH": tests_dir}
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)

    good = await asyncio.to_thread(run, "versioned_v2")
    bad = await asyncio.to_thread(run, "versioned_v3")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ok (" in good.stdout
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "DIVERGES" in bad.stdout and "name='audit'" in bad.stdout and "name='step_one'" in bad.stdout
