"""A history append is sent again while unanswered (runtime/publish_resend.py): the first copy
stored, or a conflict, decides; refused copies are not an answer until the window is over.
(The cluster case, a stream leader killed under an append, is in test_cluster.py.)"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig
from structlog.testing import capture_logs

from perdure import EmbeddedServer
from perdure.runtime.errors import HistoryConflict, Unavailable
from perdure.runtime.nats_client import Connection


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedServer]:
    server = EmbeddedServer(store_dir=tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _add_stream(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(StreamConfig(name="HIST", subjects=["hist.>"], allow_direct=True))
    finally:
        await nc.close()


async def _until_logged(logs: list[dict[str, object]], event: str, count: int = 1) -> None:
    async with asyncio.timeout(10):
        while sum(1 for line in logs if line["event"] == event) < count:  # noqa: ASYNC110 - a log line
            await asyncio.sleep(0.01)


async def test_a_late_answer_decides_and_the_copy_sent_meanwhile_is_not_stored(
    server: EmbeddedServer,
) -> None:
    await _add_stream(server.url)
    conn = await Connection.connect(server.url)
    try:
        assert server.pid is not None
        with capture_logs() as logs:
            os.kill(server.pid, signal.SIGSTOP)  # the first copy waits in the socket, unanswered
            try:
                appending = asyncio.ensure_future(
                    conn.publish_resent(
                        "hist.a", b"step", expected_last_subject_seq=0, resend_after=0.2, resend_for=5
                    )
                )
                await _until_logged(logs, "nats.publish_sent_again", 2)
                assert not appending.done()
            finally:
                os.kill(server.pid, signal.SIGCONT)
            ack = await asyncio.wait_for(appending, 10)  # the first copy's Ack, not the copies' conflicts
        assert ack.seq == 1
        stored = await conn.read_subject("HIST", "hist.a")
        assert [(m.seq, m.data) for m in stored] == [(1, b"step")]
    finally:
        await conn.close()


async def test_a_conflict_decides_at_once(server: EmbeddedServer) -> None:
    await _add_stream(server.url)
    conn = await Connection.connect(server.url)
    try:
        await conn.publish("hist.b", b"theirs")
        with pytest.raises(HistoryConflict):
            await conn.publish_resent(
                "hist.b", b"mine", expected_last_subject_seq=0, resend_after=0.2, resend_for=5
            )
    finally:
        await conn.close()


async def test_refused_copies_wait_for_a_stream_to_take_one(server: EmbeddedServer) -> None:
    """No stream yet (a leader being elected answers the same 503): not an answer while the
    window lasts; the copy sent once the stream exists is stored."""
    conn = await Connection.connect(server.url)
    try:
        with capture_logs() as logs:
            appending = asyncio.ensure_future(
                conn.publish_resent(
                    "hist.c", b"step", expected_last_subject_seq=0, resend_after=0.1, resend_for=10
                )
            )
            await _until_logged(logs, "nats.publish_sent_again")
            assert not appending.done()
            await _add_stream(server.url)
            ack = await asyncio.wait_for(appending, 10)
        assert ack.seq == 1
        assert [m.data for m in await conn.read_subject("HIST", "hist.c")] == [b"step"]
    finally:
        await conn.close()


async def test_refused_until_the_window_is_over_raises_the_refusal(server: EmbeddedServer) -> None:
    conn = await Connection.connect(server.url)
    try:
        with capture_logs() as logs, pytest.raises(Unavailable, match=r"no JetStream stream stored hist\.d"):
            await asyncio.wait_for(
                conn.publish_resent(
                    "hist.d", b"x", expected_last_subject_seq=0, resend_after=0.1, resend_for=0.5
                ),
                10,
            )
        assert sum(1 for line in logs if line["event"] == "nats.publish_sent_again") >= 2
    finally:
        await conn.close()
