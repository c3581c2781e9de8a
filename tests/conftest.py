"""Fixtures: a real nats-server (embedded launcher, free port, temporary store) per session,
a fresh namespace per test so tests never see each other's streams."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from perdure import Client, EmbeddedServer, Settings
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
