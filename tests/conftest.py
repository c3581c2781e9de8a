"""Fixtures: a real nats-server (embedded launcher, free port, temporary store) per session,
a fresh namespace per test so tests never see each other's streams."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from perdure import Client, EmbeddedServer, Settings
from perdure.runtime.limits import payload_limit, reread_environment
from perdure.runtime.logs import configure

configure("WARNING")


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(store_dir=tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def settings(nats_server: EmbeddedServer, namespace: str) -> Settings:
    return Settings(url=nats_server.url, namespace=namespace, name=f"rt-{namespace}")


@pytest.fixture
async def client(nats_server: EmbeddedServer, namespace: str) -> AsyncIterator[Client]:
    c = await Client.connect(nats_server.url, namespace=namespace)
    yield c
    await c.close()


@pytest.fixture(scope="session")
def tests_dir() -> Path:
    return Path(__file__).resolve().parent


@pytest.fixture
def bounded_payloads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Issue 12: payloads over the offload threshold go to the object store, up to
    ``PERDURE_PAYLOAD_MAX_BYTES``; tests written for the one-message limit pin that bound to
    it (``pytestmark = pytest.mark.usefixtures("bounded_payloads")``), so the refusals at
    every entry point are still checked. The variable is read once per process: read again."""
    monkeypatch.setenv("PERDURE_PAYLOAD_MAX_BYTES", str(payload_limit(None)))
    reread_environment()
    yield
    reread_environment()  # the next test reads the variable as it is then
