"""Issue 12: the CLI and the console decode encrypted payloads with the key when given one
(``PERDURE_PAYLOAD_KEYS``), and show "<encrypted>" otherwise; offloaded payloads read back."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from offload_workflows import MARKER, SECRET, secret

from perdure import Client, EmbeddedServer, Settings, Worker
from perdure.runtime.payload_cipher import AesGcmKeys

from support import run_perdure

KEY = os.urandom(32)
KEYS_ENV = f"k1:{base64.b64encode(KEY).decode()}"
BIG = MARKER + "y" * (300 * 1024)  # offloaded (and encrypted)


async def perdure(server: EmbeddedServer, namespace: str, *args: str, keys: str = "") -> tuple[int, str, str]:
    return await run_perdure(*args, url=server.url, namespace=namespace, PERDURE_PAYLOAD_KEYS=keys)


@pytest.fixture
async def clients(nats_server: EmbeddedServer, namespace: str) -> AsyncIterator[tuple[Client, Client]]:
    """A client with the payload key and one without it."""
    keyed = await Client.connect(nats_server.url, namespace=namespace, payload_cipher=AesGcmKeys({"k1": KEY}))
    keyless = await Client.connect(nats_server.url, namespace=namespace)
    try:
        yield keyed, keyless
    finally:
        await keyed.close()
        await keyless.close()


async def test_cli_and_console_show_encrypted_without_the_key(
    nats_server: EmbeddedServer, namespace: str, settings: Settings, clients: tuple[Client, Client]
) -> None:
    from perdure.client.console.pages import Pages

    keyed, keyless = clients
    async with Worker(SECRET, settings=replace(settings, payload_cipher=AesGcmKeys({"k1": KEY}))):
        handle = await keyed.start(secret, BIG, id="shown")
        await handle.signal("more", "?")
        assert await handle.result(timeout=30) == BIG + "!?"

    code, out, err = await perdure(nats_server, namespace, "history", "shown", keys=KEYS_ENV)
    assert code == 0 and MARKER in out and "<encrypted>" not in out, err
    code, out, err = await perdure(nats_server, namespace, "result", "shown", keys=KEYS_ENV)
    assert code == 0 and out.strip() == f'"{BIG}!?"', err[-2000:]

    code, out, err = await perdure(nats_server, namespace, "history", "shown")
    assert code == 0 and "<encrypted>" in out and MARKER not in out, err
    code, out, err = await perdure(nats_server, namespace, "result", "shown")
    assert code == 0 and "<encrypted>" in out and MARKER not in out and "payload.key_missing" in err

    for client, visible in ((keyed, True), (keyless, False)):
        found = await Pages(client)._execution("shown")
        assert found is not None
        shown = repr(found["steps"]) + repr(found["related"])
        assert (MARKER in shown) is visible and ("<encrypted>" in shown) is not visible


async def test_console_checkpoints_are_decrypted_or_shown_encrypted(
    nats_server: EmbeddedServer, namespace: str, settings: Settings, clients: tuple[Client, Client]
) -> None:
    from activity_workflows import tokens
    from offload_workflows import OFFLOAD, external_result

    from perdure.client.console.state import open_attempts

    keyed, keyless = clients
    async with Worker(OFFLOAD, settings=replace(settings, payload_cipher=AesGcmKeys({"k1": KEY}))):
        await keyed.start(external_result, 1, id="cp")
        token = await asyncio.wait_for(tokens("cp").get(), 20)
        await keyed.heartbeat_activity(token, MARKER)
        for client, shown in ((keyed, f'"{MARKER}"'), (keyless, '"<encrypted>"')):
            (attempt,) = await open_attempts(client.conn, client.names)
            assert attempt.checkpoint is not None and bytes(attempt.checkpoint).decode() == shown
        await keyed.heartbeat_activity(token, BIG)  # offloaded: not fetched for display
        (attempt,) = await open_attempts(keyed.conn, keyed.names)
        assert attempt.checkpoint is not None and b"<offloaded: " in bytes(attempt.checkpoint)
        await keyed.complete_activity(token, "done")
