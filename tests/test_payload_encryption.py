"""Issue 12, encryption at rest: with a payload cipher (AES-GCM keys with ids), histories,
inbox and work messages, KV records and offloaded objects hold ciphertext; a missing or
wrong key is a clear coded error, never a hang; keys rotate. Against the real server."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace

import pytest
from offload_workflows import MARKER, SECRET, secret

from perdure import Client, EmbeddedServer, Settings, Worker
from perdure.runtime.errors import PayloadDecryptFailed, PayloadKeyMissing
from perdure.runtime.naming import kv_stream
from perdure.runtime.payload_cipher import AesGcmKeys, parse_keys

KEY_A, KEY_B = os.urandom(32), os.urandom(32)
BIG_SECRET = MARKER + "x" * (400 * 1024)  # over the offload threshold: an encrypted object


async def raw_messages(client: Client) -> list[bytes]:
    """Every message stored in the namespace's streams, buckets and object store."""
    n = client.names
    streams = [
        n.history_stream,
        n.inbox_stream,
        n.work_stream,
        n.dead_stream,
        kv_stream(n.timers_bucket),
        kv_stream(n.executions_bucket),
        f"OBJ_{n.payloads_bucket}",
    ]
    out: list[bytes] = []
    for stream in streams:
        out += [s.data for s in await client.conn.read_subject(stream, ">")]
    return out


async def wait_for_status(client: Client, execution_id: str, status: str, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        async for description in client.get_handle(execution_id).watch():
            if description.status == status:
                return


async def wait_for_step(client: Client, execution_id: str, text: bytes, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    names = client.names
    while loop.time() < deadline:
        stored = await client.conn.read_subject(names.history_stream, names.history(execution_id))
        if any(text in s.data for s in stored):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no step with {text!r} in the history of {execution_id}")


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    return replace(settings, payload_cipher=AesGcmKeys({"a": KEY_A}))


async def connect(server: EmbeddedServer, namespace: str, keys: dict[str, bytes] | None) -> Client:
    return await Client.connect(
        server.url, namespace=namespace, payload_cipher=AesGcmKeys(keys) if keys else None
    )


async def test_no_plaintext_at_rest(nats_server: EmbeddedServer, namespace: str, keyed: Settings) -> None:
    client = await connect(nats_server, namespace, {"a": KEY_A})
    try:
        async with Worker(SECRET, settings=keyed):
            small = await client.start(secret, MARKER, id="small")
            big = await client.start(secret, BIG_SECRET, id="big")
            await small.signal("more", MARKER)
            await big.signal("more", MARKER)
            assert await small.result(timeout=30) == MARKER + "!" + MARKER
            assert await big.result(timeout=30) == BIG_SECRET + "!" + MARKER
            stored = await raw_messages(client)
    finally:
        await client.close()
    assert stored and any(b'"$perdure_enc"' in data for data in stored)  # the scan reads real data
    assert any(b'"$perdure_ref"' in data for data in stored)  # and the big one was offloaded
    leaks = [data[:200] for data in stored if MARKER.encode() in data]
    assert leaks == []


async def test_a_missing_or_wrong_key_is_a_clear_error(
    nats_server: EmbeddedServer, namespace: str, keyed: Settings, settings: Settings
) -> None:
    client = await connect(nats_server, namespace, {"a": KEY_A})
    keyless = await connect(nats_server, namespace, None)
    wrong = await connect(nats_server, namespace, {"a": KEY_B})
    try:
        async with Worker(SECRET, settings=keyed):
            done = await client.start(secret, MARKER, id="done")
            await done.signal("more", "!")
            assert await done.result(timeout=30) == MARKER + "!!"
            waiting = await client.start(secret, MARKER, id="waiting")
            await wait_for_step(client, "waiting", b"activity.completed")
        with pytest.raises(PayloadKeyMissing) as missing:
            await asyncio.wait_for(keyless.get_handle("done").result(), 10)
        assert missing.value.code == "payload.key_missing" and "'a'" in missing.value.message
        with pytest.raises(PayloadDecryptFailed) as failed:
            await asyncio.wait_for(wrong.get_handle("done").result(), 10)
        assert failed.value.code == "payload.decrypt_failed"
        assert KEY_A.hex() not in str(failed.value) and KEY_B.hex() not in str(failed.value)
        # A runtime without the key cannot read the signal: BLOCKED with that reason, not a loop.
        async with Worker(SECRET, settings=settings):
            await waiting.signal("more", "?")
            await wait_for_status(client, "waiting", "BLOCKED")
            description = await waiting.describe()
            assert description.error is not None and description.error.code == "payload.key_missing"
    finally:
        for c in (client, keyless, wrong):
            await c.close()


async def test_keys_rotate(nats_server: EmbeddedServer, namespace: str, keyed: Settings) -> None:
    old = await connect(nats_server, namespace, {"a": KEY_A})
    try:
        async with Worker(SECRET, settings=keyed):
            handle = await old.start(secret, MARKER, id="rotated")
            await wait_for_step(old, "rotated", b"activity.completed")
    finally:
        await old.close()
    rotated = replace(keyed, payload_cipher=AesGcmKeys({"b": KEY_B, "a": KEY_A}))
    client = await connect(nats_server, namespace, {"b": KEY_B, "a": KEY_A})
    try:
        async with Worker(SECRET, settings=rotated):  # replays history written with key a
            handle = client.get_handle("rotated", secret)
            await handle.signal("more", "?")
            assert await handle.result(timeout=30) == MARKER + "!?"
        names = client.names
        stored = await client.conn.read_subject(names.history_stream, names.history("rotated"))
        assert b'"kid":"a"' in stored[0].data and b'"kid":"b"' in stored[-1].data
    finally:
        await client.close()


def test_keys_parse_and_never_show() -> None:
    import base64

    text = f"b:{base64.b64encode(KEY_B).decode()}\n# old\na:{base64.urlsafe_b64encode(KEY_A).decode()}"
    keys = parse_keys(text, source="test")
    assert list(keys) == ["b", "a"] and keys == {"b": KEY_B, "a": KEY_A}
    cipher = AesGcmKeys(keys)
    assert cipher.primary == "b" and base64.b64encode(KEY_B).decode() not in repr(cipher)
    with pytest.raises(Exception, match="entry 1 is not") as bad:
        parse_keys("secretvalue", source="PERDURE_PAYLOAD_KEYS")
    assert "secretvalue" not in str(bad.value)
    kid, ciphertext = cipher.encrypt(b"hello")
    assert kid == "b" and AesGcmKeys({"b": KEY_B}).decrypt(kid, ciphertext) == b"hello"
