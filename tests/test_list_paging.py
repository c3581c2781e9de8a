"""Listing executions a page at a time (issue 11: "one ordered read of the index, paged").

A runtime process runs real workflows on a real nats-server; the listing is then paged
through the client, ``perdure list`` in both output modes, and the console's executions
page (its Starlette app, over httpx): every execution exactly once, most recently changed
first (descending index revision), the same order as the one read of the whole index.
And ``perdure --help`` with its argument parsing loads neither nats-py nor the engine.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from perdure import Client, EmbeddedServer, Settings
from perdure.client.console.pages import create_app
from perdure.runtime import codec
from perdure.runtime.errors import InvalidPayload
from perdure.runtime.kv_bucket import KVBucket
from perdure.runtime.messages import ExecutionRecord
from perdure.runtime.provision import Provisioner

from support import RuntimeProcess, run_perdure

pytestmark = pytest.mark.timeout(240)

GREETS, BOOMS, PAGE = 17, 6, 5


class Listing:
    def __init__(self, url: str, namespace: str, client: Client, ids: dict[str, str]) -> None:
        self.url, self.namespace, self.client = url, namespace, client
        self.ids = ids  # execution id -> workflow

    async def perdure(self, *args: str) -> tuple[int, str, str]:
        return await run_perdure(*args, url=self.url, namespace=self.namespace)


@pytest.fixture(scope="module")
async def listing(nats_server: EmbeddedServer) -> AsyncIterator[Listing]:
    namespace = "page" + uuid.uuid4().hex[:10]
    runtime = await RuntimeProcess(
        nats_server.url, namespace, f"rt-{namespace}", targets=("cli_workflows",)
    ).astart()
    client = await Client.connect(nats_server.url, namespace=namespace)
    try:
        ids = {f"greet-{i:02d}": "greet" for i in range(GREETS)} | {
            f"boom-{i:02d}": "boom" for i in range(BOOMS)
        }
        for execution_id, workflow in ids.items():
            await client.start(workflow, execution_id, id=execution_id)
        for execution_id in ids:  # every one closed: the listing no longer changes
            handle = client.get_handle(execution_id)
            async for d in handle.watch():
                if d.status in ("COMPLETED", "FAILED"):
                    break
        yield Listing(nats_server.url, namespace, client, ids)
    finally:
        await client.close()
        runtime.kill()


def assert_each_once_in_order(pages: list[list[tuple[str, int]]], expected: list[str]) -> None:
    """Every page but the last is full; the pages together list ``expected``, each id once,
    in descending revision."""
    assert all(len(p) == PAGE for p in pages[:-1]), [len(p) for p in pages]
    rows = [row for p in pages for row in p]
    ids = [i for i, _ in rows]
    assert len(ids) == len(set(ids)), ids
    assert ids == expected
    revisions = [r for _, r in rows]
    assert revisions == sorted(revisions, reverse=True) and len(set(revisions)) == len(revisions)


async def test_client_pages_list_every_execution_once_in_order(listing: Listing) -> None:
    everything = await listing.client.list_executions()
    assert {d.execution_id for d in everything} == set(listing.ids)
    order = [d.execution_id for d in everything]
    pages: list[list[tuple[str, int]]] = []
    after = None
    while True:
        page = await listing.client.list_page(limit=PAGE, after=after)
        assert page.indexed == len(listing.ids)
        pages.append([(d.execution_id, d.revision) for d in page.executions])
        if page.next is None:
            break
        assert page.next == str(page.executions[-1].revision)
        after = page.next
    assert len(pages) == -(-len(listing.ids) // PAGE)
    assert_each_once_in_order(pages, order)

    # A filter pages over the matching executions only, in the same order.
    failed = [d.execution_id for d in everything if d.status == "FAILED"]
    assert sorted(failed) == sorted(i for i, w in listing.ids.items() if w == "boom")
    pages, after = [], None
    while True:
        page = await listing.client.list_page(status="FAILED", limit=PAGE, after=after)
        pages.append([(d.execution_id, d.revision) for d in page.executions])
        if page.next is None:
            break
        after = page.next
    assert_each_once_in_order(pages, failed)
    page = await listing.client.list_page(prefix="greet-1", limit=0)
    assert sorted(d.execution_id for d in page.executions) == [f"greet-{i}" for i in range(10, GREETS)]

    # ``since`` may end the read early (entries stored well before it cannot match), never
    # before a match: started an hour ago or later is every execution, page by page.
    pages, after = [], None
    while True:
        page = await listing.client.list_page(since=time.time() - 3600, limit=PAGE, after=after)
        pages.append([(d.execution_id, d.revision) for d in page.executions])
        if page.next is None:
            break
        after = page.next
    assert_each_once_in_order(pages, order)
    page = await listing.client.list_page(since=time.time() + 3600, limit=PAGE)
    assert page.executions == [] and page.next is None


async def test_perdure_list_json_pages_by_revision(listing: Listing) -> None:
    order = [d.execution_id for d in await listing.client.list_executions()]
    pages: list[list[tuple[str, int]]] = []
    cursor: list[str] = []
    while True:
        code, out, err = await listing.perdure("list", "--limit", str(PAGE), "--json", *cursor)
        assert code == 0, err
        rows = json.loads(out)
        assert all(set(r) >= {"execution_id", "status", "revision"} for r in rows)
        if not rows:
            break
        pages.append([(r["execution_id"], r["revision"]) for r in rows])
        if len(rows) < PAGE:
            break
        cursor = ["--after", str(rows[-1]["revision"])]
    if not pages[-1]:
        pages.pop()
    assert_each_once_in_order(pages, order)


async def test_perdure_list_text_pages_until_no_cursor(listing: Listing) -> None:
    everything = await listing.client.list_executions()
    revision = {d.execution_id: d.revision for d in everything}
    pages: list[list[tuple[str, int]]] = []
    cursor: list[str] = []
    while True:
        code, out, err = await listing.perdure("list", "--limit", str(PAGE), *cursor)
        assert code == 0, err
        header, *lines = out.strip().splitlines()
        assert header.split()[:3] == ["ID", "WORKFLOW", "STATUS"]
        more = re.fullmatch(r"\(more: --after (\d+) shows the next page; --limit 0 shows all\)", lines[-1])
        rows = lines[:-1] if more else lines
        pages.append([(ln.split()[0], revision[ln.split()[0]]) for ln in rows])
        if more is None:
            break
        assert int(more.group(1)) == pages[-1][-1][1]
        cursor = ["--after", more.group(1)]
    assert_each_once_in_order(pages, [d.execution_id for d in everything])

    code, _, err = await listing.perdure("list", "--after", "not-a-cursor")
    assert code == 2 and "--after" in err, err


async def test_console_executions_pages_follow_next_links(listing: Listing) -> None:
    everything = await listing.client.list_executions()
    revision = {d.execution_id: d.revision for d in everything}
    app = create_app(listing.client, page_size=PAGE)
    pages: list[list[tuple[str, int]]] = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console") as http:
        url = "/executions"
        while True:
            response = await http.get(url)
            assert response.status_code == 200, response.text
            ids = re.findall(r'<tr data-id="([^"]+)">', response.text)
            pages.append([(i, revision[i]) for i in ids])
            link = re.search(r'<a rel="next" href="([^"]+)">', response.text)
            if link is None:
                break
            url = link.group(1).replace("&amp;", "&")
        assert f"{len(listing.ids)} executions indexed" in response.text
        # Filters ride along in the next link.
        response = await http.get("/executions", params={"workflow": "greet"})
        link = re.search(r'<a rel="next" href="([^"]+)">', response.text)
        assert link is not None and "workflow=greet" in link.group(1)
        response = await http.get("/executions", params={"after": "x"})
        assert response.status_code == 400
    assert_each_once_in_order(pages, [d.execution_id for d in everything])


def test_help_and_parsing_load_neither_nats_nor_the_engine() -> None:
    probe = (
        "import sys\n"
        "from perdure.runtime.daemon import _parser\n"
        "_parser().parse_args(['list', '--status', 'RUNNING', '--limit', '3'])\n"
        "loaded = sorted(m for m in sys.modules if m == 'nats' or m.startswith(('nats.', 'perdure.actors')))\n"
        "print(loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "perdure.runtime.daemon", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "list" in done.stdout
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert not {m for m in imported if m == "nats" or m.startswith(("nats.", "perdure.actors"))}


async def test_an_execution_that_changes_while_paging_moves_to_the_first_page(
    client: Client, settings: Settings
) -> None:
    """The documented semantics (client/index_pages.py): one walk through the pages never
    lists an execution twice; one that changes moves to the first page. Index entries are
    written as a runtime writes them (``ExecutionRecord`` put on the index bucket)."""
    await Provisioner(client.conn, settings).provision()
    index = KVBucket(client.conn, client.names, client.names.executions_bucket)

    async def put(i: int, status: str = "RUNNING") -> None:
        record = ExecutionRecord(execution_id=f"e{i:02d}", workflow="w", status=status, started_at=1000.0 + i)
        await index.put(record.execution_id, codec.encode(record))

    for i in range(12):
        await put(i)
    await index.purge("e05")  # a purged entry is not listed
    first = await client.list_page(limit=4)
    assert [d.execution_id for d in first.executions] == ["e11", "e10", "e09", "e08"]
    await put(9, "COMPLETED")  # listed already: not again
    await put(2, "COMPLETED")  # not listed yet: on the next walk's first page
    seen = [d.execution_id for d in first.executions]
    after = first.next
    while after is not None:
        page = await client.list_page(limit=4, after=after)
        seen += [d.execution_id for d in page.executions]
        after = page.next
    assert seen == ["e11", "e10", "e09", "e08", "e07", "e06", "e04", "e03", "e01", "e00"]
    again = await client.list_page(limit=3)
    assert [(d.execution_id, d.status) for d in again.executions] == [
        ("e02", "COMPLETED"),
        ("e09", "COMPLETED"),
        ("e11", "RUNNING"),
    ]
    assert again.indexed == 11  # e05 purged
    with pytest.raises(InvalidPayload):
        await client.list_page(after="0")


async def test_a_selective_filter_pages_through_a_large_index(client: Client, settings: Settings) -> None:
    """A filter that few entries match widens the read until it switches to one ordered read
    of the rest (``CONSUMER_WINDOW``, past 32 + 128 + 512 sequences without a match): the pages
    still list each match once, in order."""
    await Provisioner(client.conn, settings).provision()
    index = KVBucket(client.conn, client.names, client.names.executions_bucket)
    failed = {5, 1000, 1990}
    sent = []
    for i in range(2000):
        status = "FAILED" if i in failed else "COMPLETED"
        record = ExecutionRecord(execution_id=f"x{i:04d}", workflow="w", status=status, started_at=float(i))
        sent.append(await index.put_nowait(record.execution_id, codec.encode(record)))
    await asyncio.gather(*sent)
    pages: list[list[str]] = []
    after = None
    while True:
        page = await client.list_page(status="FAILED", limit=1, after=after)
        pages.append([d.execution_id for d in page.executions])
        if page.next is None:
            break
        after = page.next
    assert pages == [["x1990"], ["x1000"], ["x0005"]]
