"""``handle.result()`` on an id that does not exist, and its timeout (issue 10, item 7)."""

from __future__ import annotations

import time

import pytest

from perdure import Client, ExecutionNotFound, Settings, Worker
from perdure.runtime.provision import Provisioner

from workflows import sleeper


async def test_result_of_a_missing_execution_raises_not_found(client: Client, settings: Settings) -> None:
    await Provisioner(client.conn, settings).provision()
    began = time.monotonic()
    with pytest.raises(ExecutionNotFound) as caught:
        await client.get_handle("nope").result(timeout=3)
    assert "nope" in str(caught.value)
    assert time.monotonic() - began < 2.5  # it does not wait the timeout out to say so


async def test_result_timeout_says_what_it_waited_for(client: Client, settings: Settings) -> None:
    async with Worker([sleeper], settings=settings):
        handle = await client.start(sleeper, 30.0, id="long-sleep")
        with pytest.raises(TimeoutError) as caught:
            await handle.result(timeout=1)
    message = str(caught.value)
    assert "long-sleep" in message and "1" in message and "RUNNING" in message, message


async def test_result_of_a_start_no_runtime_took_yet_times_out_not_missing(
    client: Client, settings: Settings
) -> None:
    """Started, but no runtime hosts the namespace: it exists (in the inbox), so it times out."""
    await Provisioner(client.conn, settings).provision()
    handle = await client.start("sleeper", 1.0, id="queued")
    with pytest.raises(TimeoutError) as caught:
        await handle.result(timeout=1)
    assert "queued" in str(caught.value) and "not been taken" in str(caught.value), str(caught.value)
