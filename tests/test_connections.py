"""Connections (issue 10, item 4 and the end of item 1): the first connect is bounded and says
why it failed, credentials never show, a connection closed for good is seen, and a transient
JetStream outage is answered with a retryable code that the client retries."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from password_server import PasswordServer

from perdure import Client, ConnectionLost, EmbeddedServer, Settings, Worker
from perdure.runtime import codec
from perdure.runtime.embedded import free_port
from perdure.runtime.errors import ConfigurationError, PerdureError
from perdure.runtime.nats_admin import delete_streams
from perdure.runtime.provision import Provisioner

BOUND = 2.0  # the connect bound the tests set; the default is 10 s
SLACK = 3.0  # a loaded 2-core machine


@pytest.fixture
def password_server(tmp_path: Path) -> Iterator[PasswordServer]:
    server = PasswordServer(tmp_path)
    yield server
    server.stop()


def closed_port() -> int:
    return free_port()  # nothing listens there once the probe socket is closed


@pytest.fixture(autouse=True)
def connect_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERDURE_CONNECT_TIMEOUT", str(BOUND))


async def connect_fails(url: str) -> tuple[PerdureError, float]:
    began = time.monotonic()
    with pytest.raises(PerdureError) as caught:
        async with asyncio.timeout(BOUND + SLACK + 5):  # the test's own guard against a hang
            client = await Client.connect(url)
            await client.close()
    return caught.value, time.monotonic() - began


async def test_connect_to_a_closed_port_fails_within_the_bound() -> None:
    port = closed_port()
    exc, took = await connect_fails(f"nats://127.0.0.1:{port}")
    assert isinstance(exc, ConnectionLost)
    assert took < BOUND + SLACK, took
    assert f"nats://127.0.0.1:{port}" in str(exc) and "refused" in str(exc), str(exc)


async def test_connect_to_an_unresolvable_host_fails_within_the_bound() -> None:
    exc, took = await connect_fails("nats://no-such-host.invalid:4222")
    assert isinstance(exc, ConnectionLost)
    assert took < BOUND + SLACK, took
    assert "no-such-host.invalid" in str(exc) and "resolve" in str(exc), str(exc)


@pytest.mark.parametrize("url", ["nats://127.0.0.1:notaport", "nats://:4222x", "http//oops"])
async def test_a_malformed_url_fails_at_once(url: str) -> None:
    exc, took = await connect_fails(url)
    assert exc.code == "config.invalid", exc
    assert took < 1.0, took
    assert "malformed" in str(exc), str(exc)


async def test_a_wrong_password_fails_fast_and_is_never_shown(
    password_server: PasswordServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERDURE_CONNECT_TIMEOUT", "10")
    exc, took = await connect_fails(password_server.url(password="wrong-pw"))
    assert took < 2.0, f"a wrong password waited {took:.1f} s"
    assert isinstance(exc, ConfigurationError) and exc.code == "nats.auth_refused", exc
    assert "authorization" in str(exc).lower(), str(exc)
    assert "wrong-pw" not in str(exc) and f"alice:***@127.0.0.1:{password_server.port}" in str(exc)


async def test_the_right_password_connects(password_server: PasswordServer) -> None:
    client = await Client.connect(password_server.url())
    await client.conn.flush()
    await client.close()


def test_redact_url() -> None:
    from perdure.runtime.urls import redact_url

    assert redact_url("nats://alice:s3cret@h:4222") == "nats://alice:***@h:4222"
    assert redact_url("nats://tok3n@h:4222") == "nats://***@h:4222"
    assert redact_url("nats://a:b@h1:1,nats://h2:2") == "nats://a:***@h1:1,nats://h2:2"
    assert redact_url("nats://h:4222") == "nats://h:4222"
    assert redact_url("tls://u:p%40ss@h") == "tls://u:***@h"


async def test_jetstream_unavailable_is_retried_by_the_client(
    nats_server: EmbeddedServer, namespace: str
) -> None:
    """A publish no stream takes (a restart, a leader election) is ``unavailable``, retryable,
    and the client retries it for its request timeout before giving up."""
    settings = Settings(url=nats_server.url, namespace=namespace)
    client = await Client.connect(nats_server.url, namespace=namespace)
    try:
        client.request_timeout = 1.5
        began = time.monotonic()
        with pytest.raises(ConnectionLost) as caught:
            await client.start("wf", 1, id="a")  # not provisioned: nothing stores the inbox
        assert caught.value.retryable and caught.value.code == "unavailable"
        assert 1.0 < time.monotonic() - began < 1.5 + SLACK
        client.request_timeout = 10.0

        async def provision_later() -> None:
            await asyncio.sleep(0.5)
            conn = client.conn
            await Provisioner(conn, settings).provision()

        late = asyncio.ensure_future(provision_later())
        handle = await client.start("wf", 1, id="b")  # retried until the stream exists
        await late
        assert handle.id == "b"
    finally:
        await client.close()


async def test_api_answers_unavailable_when_the_inbox_stream_is_gone(
    nats_server: EmbeddedServer, namespace: str
) -> None:
    """The completion service's inbox publish meeting no stream answers ``unavailable``
    (retryable), not ``config.invalid`` (which reads as permanent)."""
    from activity_workflows import approval, approve

    settings = Settings(url=nats_server.url, namespace=namespace, name=f"rt-{namespace}")
    async with Worker([approval, approve], settings=settings):
        client = await Client.connect(nats_server.url, namespace=namespace)
        try:
            handle = await client.start(approval, "r", id="x1")
            async with asyncio.timeout(20):
                async for record in handle.watch():
                    if record.history_length > 0:
                        break
            await delete_streams(client.conn, [client.names.inbox_stream])
            body = codec.encode({"execution_id": "x1", "name": "go", "payload": 1})
            reply = await client.conn.request(client.names.api("signal"), body, timeout=10)
            error = codec.decode(codec.api_reply, reply, what="reply").error
            assert error is not None and error.code == "unavailable", reply
        finally:
            with contextlib.suppress(Exception):
                await Provisioner(client.conn, settings).provision()
            await client.close()


async def test_a_connection_closed_for_good_fails_calls_and_waits(password_server: PasswordServer) -> None:
    """Credentials rotated under a connected client: nats-py would retry the refused login for
    ever (a warning every 250 ms). The connection is given up after a few refusals, a pending
    ``result()`` ends with ``ConnectionLost`` and so does the next call, at once."""
    client = await Client.connect(password_server.url(), namespace="pw")
    try:
        await Provisioner(client.conn, Settings(url=password_server.url(), namespace="pw")).provision()
        handle = await client.start("wf", 1, id="waiting")  # no runtime: result() waits
        waiting = asyncio.ensure_future(handle.result())
        await client.conn.flush()
        password_server.reload("alice", "rotated")
        async with asyncio.timeout(15):
            lost = await client.conn.wait_closed()
        assert lost is not None and "authorization" in str(lost).lower(), lost
        assert "s3cret" not in str(lost)
        async with asyncio.timeout(2):
            with pytest.raises(ConnectionLost):
                await waiting  # a pending wait ends at once too, it does not hang
        began = time.monotonic()
        with pytest.raises(ConnectionLost):
            await client.describe("anything")
        with pytest.raises(ConnectionLost):
            await client.start("wf", 1, id="x")
        assert time.monotonic() - began < 1.0
    finally:
        await client.close()


async def test_complete_right_after_a_nats_restart_succeeds(tmp_path: Path) -> None:
    """Right after nats-server restarts (same store, same port), completing an activity by
    token works: what JetStream cannot take yet is answered ``unavailable`` and retried,
    never ``config.invalid``."""
    from activity_workflows import approval, approve, tokens

    port = free_port()
    server = EmbeddedServer(store_dir=tmp_path / "nats", port=port)
    server.start()
    namespace = "restart"
    settings = Settings(url=server.url, namespace=namespace, name="rt-restart")
    try:
        async with Worker([approval, approve], settings=settings):
            client = await Client.connect(server.url, namespace=namespace)
            try:
                handle = await client.start(approval, "r", id="r1")
                async with asyncio.timeout(20):
                    token = await tokens("r1").get()
                await asyncio.to_thread(server.stop)
                server = EmbeddedServer(store_dir=tmp_path / "nats", port=port)
                await asyncio.to_thread(server.start)
                await client.complete_activity(token, True)  # at once, while everyone reconnects
                assert await handle.result(timeout=20) == "approved"
            finally:
                await client.close()
    finally:
        server.stop()


def test_the_connect_bound_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from perdure.runtime.settings import connect_timeout_from_env

    monkeypatch.delenv("PERDURE_CONNECT_TIMEOUT")
    assert connect_timeout_from_env() == 10.0 and Settings().connect_timeout == 10.0
    monkeypatch.setenv("PERDURE_CONNECT_TIMEOUT", "2.5")
    assert Settings.from_env().connect_timeout == 2.5
    for bad in ("abc", "0", "-1"):
        monkeypatch.setenv("PERDURE_CONNECT_TIMEOUT", bad)
        with pytest.raises(ConfigurationError, match="PERDURE_CONNECT_TIMEOUT"):
            Settings.from_env()
