"""An execution actor that appends nothing (every message refused) first checks that no
other holder appended meanwhile (issue 10: ``token.invalid`` answered to a token that was
handed out). A stale actor, whose partition was held elsewhere for a moment, refuses from an
old state: a token for an activity the other holder scheduled looks like a wrong nonce."""

from __future__ import annotations

import pytest
from payload_workflows import recorded, records

from perdure import Client, Settings, Worker
from perdure.actors.history_log import HistoryLog
from perdure.runtime.errors import HistoryConflict


async def test_a_history_log_sees_another_writers_step(settings: Settings, client: Client) -> None:
    async with Worker([records, recorded], settings=settings):
        handle = await client.start(records, "x", id="stale-log")
        assert await handle.result(timeout=30) == "x"
    mine = HistoryLog(client.conn, client.names, "stale-log")
    assert await mine.load() is not None
    assert await mine.is_current()
    # Another holder appends a step (here: the last one again, which is what matters: the
    # subject's last sequence moved past the one this log read).
    other = HistoryLog(client.conn, client.names, "stale-log")
    run = await other.load()
    assert run is not None
    await other.append(run.steps[-1])
    assert not await mine.is_current()
    with pytest.raises(HistoryConflict):
        await mine.require_current()  # the actor's step then reloads before it refuses anything
    await mine.require_current(needed=False)
    await mine.load()
    assert await mine.is_current()
