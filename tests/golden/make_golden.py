"""Record the golden histories: run each scenario of ``golden_workflows.py`` on a real runtime
(an embedded nats-server in a temporary folder, a worker and a client in this process) and
write every execution's history as JSONL, one ``HistoryStep`` a line, as
``handle.history_steps()`` gives them and ``perdure replay --file`` reads them.

    .venv/bin/python tests/golden/make_golden.py v3     # writes tests/golden/v3/*.jsonl

Each folder is one generation. History lives forever, so no generation is ever rewritten or
removed: every one must still decode, re-encode byte for byte and replay. The newest must
also be what the current code decides, given the same inputs; when the engine is meant to
decide differently (v2: activities retry by default, issue 10 item 11), record a new
generation and commit it with the change.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from golden_workflows import (  # noqa: E402
    flaky,
    golden_activities,
    golden_continue,
    golden_leaf,
    golden_parent,
    golden_patched,
    golden_signals,
    golden_timers,
    greet,
)

from perdure import Client, EmbeddedServer, Settings, Worker, workflow  # noqa: E402
from perdure.runtime import codec  # noqa: E402


@workflow(name="golden_patched")
async def golden_patched_before(n: int) -> str:
    """``golden_patched`` as it was before the ``louder`` patch."""
    return await greet(f"patched {n}")


WORKFLOWS = [golden_activities, golden_timers, golden_signals, golden_leaf, golden_parent, golden_continue]


async def save(client: Client, execution_id: str, name: str, folder: Path) -> None:
    steps = await client.get_handle(execution_id).history_steps()
    lines = b"".join(codec.encode(step) + b"\n" for step in steps)
    (folder / f"{name}.jsonl").write_bytes(lines)
    print(f"{folder.name}/{name}.jsonl: {len(steps)} steps")


async def main(folder: Path) -> None:
    if folder.exists():
        raise SystemExit(f"{folder} exists: a generation is never rewritten; name a new one")
    folder.mkdir()
    with tempfile.TemporaryDirectory() as store:
        server = EmbeddedServer(store_dir=Path(store))
        server.start()
        try:
            await record_all(server.url, folder)
        finally:
            server.stop()


async def record_all(url: str, folder: Path) -> None:
    client = await Client.connect(url, namespace="golden")
    try:
        settings = Settings(url=url, namespace="golden", name="golden-runtime")
        async with Worker([*WORKFLOWS, golden_patched, greet, flaky], settings=settings):
            await (await client.start(golden_activities, "golden", id="activities")).result(timeout=30)
            await (await client.start(golden_timers, 1.0, id="timers")).result(timeout=30)
            signals = await client.start(golden_signals, 2, id="signals")
            await signals.signal("item", 1, id="item-1")
            await signals.signal("item", 2, id="item-2")
            await signals.signal("done", None, id="done")
            await signals.result(timeout=30)
            await (await client.start(golden_parent, 7, id="parent")).result(timeout=30)
            await (await client.start(golden_continue, 1, id="continued")).result(timeout=30)
            await (await client.start(golden_patched, 5, id="patched-new")).result(timeout=30)
        old = Settings(url=url, namespace="golden", name="golden-runtime-old")
        async with Worker([golden_patched_before, greet], settings=old):
            await (await client.start(golden_patched_before, 5, id="patched-old")).result(timeout=30)
        for execution_id in ("activities", "timers", "signals", "parent", "parent-leaf", "continued"):
            await save(client, execution_id, execution_id, folder)
        await save(client, "patched-new", "patched_new", folder)
        await save(client, "patched-old", "patched_old", folder)
    finally:
        await client.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: make_golden.py <generation, e.g. v3>")
    asyncio.run(main(HERE / sys.argv[1]))
