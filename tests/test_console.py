"""The web console (issue 11, "Web console"), in a real headless Chromium driven by Playwright.

A runtime runs in process; the console serves the same namespace over HTTP; the browser
opens its pages, checks what they show, cancels an execution through the confirmation
dialog and watches the status change live. Debian's ``chromium`` is the browser
(``.ci/run`` installs it): Playwright's own browser download cannot be fetched here.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from console_workflows import ALL, TOKENS, Order, await_approval, expense, heartbeating, release, report, ship

from perdure import Client, Settings, Worker
from perdure.runtime import codec
from perdure.runtime.nats_client import StoredMessage

from support import RuntimeProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.timeout(180)


def _need_browser() -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (apt-get install -y chromium)")
    pytest.importorskip(
        "playwright.async_api", reason="playwright is not installed (pip install -e '.[test]')"
    )


async def _timer_key_seen(client: Client, pattern: str, accept: Callable[[StoredMessage], bool]) -> None:
    """Wait until a key of the timers bucket matching ``pattern`` holds a value ``accept`` likes."""
    bucket = client.names.timers_bucket
    seen = asyncio.Event()

    async def on_entry(message: StoredMessage) -> None:
        if message.data and accept(message):
            seen.set()

    sub = await client.conn.watch(f"KV_{bucket}", f"$KV.{bucket}.{pattern}", on_entry)
    try:
        await asyncio.wait_for(seen.wait(), 30)
    finally:
        await sub.stop()


def _started(message: StoredMessage) -> bool:
    return codec.decode(codec.activity_record, message.data, what="record").started


async def _first_step(client: Client, execution_id: str) -> None:
    async for d in client.get_handle(execution_id).watch():
        if d.history_length >= 1:
            return


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    _need_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def test_console_shows_executions_and_cancels_one(
    browser: object, settings: Settings, client: Client, tmp_path: Path
) -> None:
    from playwright.async_api import Browser, expect

    from perdure.client.console import ConsoleServer

    assert isinstance(browser, Browser)
    order = Order(id="o-7", items=["kettle", "mug"], total=42.5)
    release.clear()
    async with Worker(ALL, settings=settings) as worker:
        shipped = await client.start(ship, order, id="ship-1")
        assert await shipped.result(timeout=30) == "shipped (o-7: 2 items, 42.50 EUR)"
        waiting = await client.start(await_approval, order, id="order-7")
        await client.start(expense, order, id="expense-3")
        token = await asyncio.wait_for(TOKENS.get(), 30)
        await client.start(report, 10, id="report-1")
        await _first_step(client, "order-7")
        # The token is handed over (its record flagged started), and the checkpoint stored.
        await _timer_key_seen(client, "*.expense-3.*.a.*.*.hb", _started)
        await asyncio.wait_for(heartbeating.wait(), 30)
        await _timer_key_seen(client, "*.report-1.*.a.*.cp", lambda m: b'"done":5' in m.data)

        console = ConsoleServer(client, port=0)
        await console.start()
        try:
            page = await browser.new_page(viewport={"width": 1360, "height": 1000})
            base = console.url

            # Executions: every one listed with its status; the filters narrow the list.
            await page.goto(f"{base}/executions")
            await expect(page.locator('tr[data-id="order-7"] .badge')).to_have_text("RUNNING")
            await expect(page.locator('tr[data-id="ship-1"] .badge')).to_have_text("COMPLETED")
            await expect(page.locator('tr[data-id="ship-1-pack"] .badge')).to_have_text("COMPLETED")
            await expect(page.locator("tbody#execution-rows")).not_to_contain_text("1970")
            await page.select_option('select[name="status"]', "COMPLETED")
            await page.click('button:has-text("Filter")')
            await expect(page.locator("tr[data-id]")).to_have_count(2)
            await page.goto(f"{base}/executions?prefix=exp")
            await expect(page.locator("tr[data-id]")).to_have_count(1)
            await page.goto(f"{base}/executions?workflow=report")
            await expect(page.locator("tr[data-id]")).to_have_count(1)
            await expect(page.locator('tr[data-id="report-1"]')).to_be_visible()

            # A finished parent: input, result, history events, its child linked (and back).
            await page.goto(f"{base}/executions/ship-1")
            await expect(page.locator("#execution-id")).to_have_text("ship-1")
            await expect(page.locator("#status")).to_have_text("COMPLETED")
            await expect(page.locator("#live")).to_contain_text('"kettle"')
            await expect(page.locator("#live")).to_contain_text('"shipped (o-7: 2 items, 42.50 EUR)"')
            for kind in ("workflow.started", "child.started", "child.closed", "workflow.completed"):
                await expect(page.locator("#timeline .kind", has_text=kind).first).to_be_visible()
            await page.click('a:has-text("ship-1-pack")')
            await expect(page.locator("#execution-id")).to_have_text("ship-1-pack")
            await expect(page.locator("#live")).to_contain_text("activity.scheduled")
            await expect(page.locator('a[href="/executions/ship-1"]')).to_be_visible()
            await page.screenshot(path=str(tmp_path / "console-child.png"), full_page=True)

            # Pending activities and tokens, runtimes and their partitions.
            await page.goto(f"{base}/activities")
            row = page.locator("#activities tr", has_text="report-1")
            await expect(row).to_contain_text("crunch")
            await expect(row).to_contain_text('"done": 5')
            await expect(row).to_contain_text("heartbeat")
            await expect(row).to_contain_text("start to close")
            await expect(page.locator("#activities")).not_to_contain_text("expense-3")
            await page.screenshot(path=str(tmp_path / "console-activities.png"), full_page=True)
            await page.goto(f"{base}/executions/expense-3")
            pending = page.locator("#live tr", has_text="ask_manager")
            await expect(pending).to_contain_text("waiting for token")
            await expect(pending).to_contain_text("start to close")
            await expect(page.locator("#live code.token")).to_have_text(token)
            await page.screenshot(path=str(tmp_path / "console-pending.png"), full_page=True)
            await page.goto(f"{base}/tokens")
            await expect(page.locator("#tokens tr", has_text="expense-3")).to_contain_text("ask_manager")
            await expect(page.locator("#tokens code.token")).to_have_text(token)
            await page.screenshot(path=str(tmp_path / "console-tokens.png"), full_page=True)
            # Lists follow live: the completed token leaves the page without a reload.
            await client.complete_activity(token, True)
            await expect(page.locator("#tokens")).not_to_contain_text("expense-3")
            await expect(page.locator("#tokens")).to_contain_text("No token is pending.")
            await page.goto(f"{base}/runtimes")
            runtime_row = page.locator("#runtimes tr", has_text=settings.name)
            await expect(runtime_row.locator(".chip")).to_have_count(settings.partitions)
            await page.screenshot(path=str(tmp_path / "console-runtimes.png"), full_page=True)

            # Cancel through the confirmation dialog; a list in another tab follows too.
            listing = await browser.new_page()
            await listing.goto(f"{base}/executions")
            await expect(listing.locator('tr[data-id="order-7"] .badge')).to_have_text("RUNNING")
            await page.goto(f"{base}/executions/order-7")
            await expect(page.locator("#status")).to_have_text("RUNNING")
            await expect(page.locator("#timeline")).to_contain_text("workflow.started")
            await expect(page.locator("#live")).to_contain_text('"o-7"')
            await page.click('button:has-text("Cancel")')
            await expect(page.locator("#cancel-dialog")).to_be_visible()
            await page.fill('#cancel-dialog input[name="reason"]', "customer changed their mind")
            await page.click("#confirm-cancel")
            await expect(page.locator(".flash.ok")).to_have_text("Cancellation requested.")
            await expect(page.locator("#status")).to_have_text("CANCELLED", timeout=30_000)
            await expect(page.locator("#timeline")).to_contain_text("cancel.requested")
            await expect(page.locator("#timeline")).to_contain_text("customer changed their mind")
            await expect(page.locator("#timeline")).to_contain_text("workflow.cancelled")
            await expect(page.locator("#actions")).to_be_hidden()
            await expect(listing.locator('tr[data-id="order-7"] .badge')).to_have_text("CANCELLED")
            assert (await waiting.describe()).status == "CANCELLED"

            # An execution's page follows it live (server-sent events): no reload.
            await page.goto(f"{base}/executions/report-1")
            await expect(page.locator("#status")).to_have_text("RUNNING")
            await expect(page.locator("#live")).to_contain_text("crunch")
            marker = await page.evaluate("() => (window.__same_page = true)")
            release.set()
            await expect(page.locator("#status")).to_have_text("COMPLETED", timeout=30_000)
            await expect(page.locator("#timeline")).to_contain_text("workflow.completed")
            assert marker and await page.evaluate("() => window.__same_page === true")
            await page.screenshot(path=str(tmp_path / "console-execution.png"), full_page=True)
            await listing.screenshot(path=str(tmp_path / "console-executions.png"), full_page=True)
            if os.environ.get("PERDURE_UPDATE_SCREENSHOTS"):  # the README's pictures
                docs = Path(__file__).resolve().parent.parent / "docs"
                docs.mkdir(exist_ok=True)
                for name in ("console-execution.png", "console-executions.png"):
                    (docs / name).write_bytes((tmp_path / name).read_bytes())
        finally:
            release.set()
            await console.stop()
        assert worker is not None


def test_importing_the_client_loads_neither_the_console_nor_starlette() -> None:
    probe = (
        "import sys, perdure.client\n"
        "from perdure import Client\n"
        "print(sorted(m for m in sys.modules if m.startswith(('starlette', 'uvicorn', 'jinja2', "
        "'perdure.client.console'))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_perdure_console_command_serves_the_namespace(settings: Settings, client: Client) -> None:
    """``perdure console --port 0`` says where it listens; its pages answer; SIGTERM ends it."""
    pytest.importorskip("starlette")
    async with Worker(ALL, settings=settings):
        await client.start(ship, Order(id="o-1", items=[], total=0.0), id="cli-1")
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "perdure.runtime.daemon", "console", "--url", settings.url or ""],
            *["--namespace", settings.namespace, "--port", "0"],
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert "console" in line, line
            url = line.rsplit(" ", 1)[1].strip()
            runtimes = await asyncio.to_thread(_get, f"{url}/runtimes")
            assert settings.name in runtimes
            executions = await asyncio.to_thread(_get, f"{url}/executions")
            assert "cli-1" in executions
        finally:
            proc.terminate()
            assert await asyncio.wait_for(proc.wait(), 20) == 0


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


async def test_console_signals_and_terminates_after_confirmation(
    browser: object, settings: Settings, client: Client, tmp_path: Path
) -> None:
    from playwright.async_api import Browser, expect

    from perdure.client.console import ConsoleServer

    assert isinstance(browser, Browser)
    order = Order(id="o-8", items=["lamp"], total=19.0)
    async with Worker(ALL, settings=settings):
        approved = await client.start(await_approval, order, id="order-8")
        doomed = await client.start(await_approval, order, id="order-9")
        await _first_step(client, "order-8")
        await _first_step(client, "order-9")
        console = ConsoleServer(client, port=0)
        await console.start()
        try:
            page = await browser.new_page(viewport={"width": 1360, "height": 1000})
            base = console.url

            # A payload that is not JSON is refused with a message; nothing is sent.
            await page.goto(f"{base}/executions/order-8")
            await page.click('button:has-text("Signal")')
            await page.fill('#signal-dialog input[name="name"]', "approval")
            await page.fill('#signal-dialog textarea[name="payload"]', "yes please")
            await page.click("#confirm-signal")
            await expect(page.locator(".flash.error")).to_contain_text("the payload is not JSON")
            await expect(page.locator("#status")).to_have_text("RUNNING")

            # Closing the dialog sends nothing either.
            await page.click('button:has-text("Signal")')
            await page.fill('#signal-dialog input[name="name"]', "approval")
            await page.click("#signal-dialog [data-close]")
            await expect(page.locator("#signal-dialog")).to_be_hidden()

            await page.click('button:has-text("Signal")')
            await page.fill('#signal-dialog input[name="name"]', "approval")
            await page.fill('#signal-dialog textarea[name="payload"]', "true")
            await page.click("#confirm-signal")
            await expect(page.locator(".flash.ok")).to_have_text("Signal 'approval' sent.")
            await expect(page.locator("#status")).to_have_text("COMPLETED", timeout=30_000)
            await expect(page.locator("#timeline")).to_contain_text("signal.received")
            await expect(page.locator("#live")).to_contain_text('"approved"')
            assert await approved.result(timeout=5) == "approved"

            await page.goto(f"{base}/executions/order-9")
            await page.click('button:has-text("Terminate")')
            await expect(page.locator("#terminate-dialog")).to_be_visible()
            await page.fill('#terminate-dialog input[name="reason"]', "duplicate order")
            await page.click("#confirm-terminate")
            await expect(page.locator("#status")).to_have_text("TERMINATED", timeout=30_000)
            await expect(page.locator("#timeline")).to_contain_text("duplicate order")
            assert (await doomed.describe()).status == "TERMINATED"
            await page.screenshot(path=str(tmp_path / "console-terminated.png"), full_page=True)

            # A form posted from another site is refused: the console acts with the client's rights.
            forged = await page.request.post(
                f"{base}/executions/order-8/cancel", headers={"Origin": "http://evil.example"}, form={}
            )
            assert forged.status == 403
            missing = await page.request.get(f"{base}/executions/no-such-execution")
            assert missing.status == 404
        finally:
            await console.stop()


async def test_worker_serves_the_console_on_console_port(settings: Settings, client: Client) -> None:
    """``perdure worker --console-port`` serves the console beside the runtime; SIGTERM ends both."""
    pytest.importorskip("starlette")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert settings.url is not None
    runtime = RuntimeProcess(
        settings.url,
        settings.namespace,
        settings.name,
        targets=("console_workflows",),
        extra_args=("--console-port", str(port)),
    )
    await runtime.astart()
    try:
        await runtime.await_line("console.listening")
        handle = await client.start(ship, Order(id="o-2", items=["cup"], total=3.0), id="worker-1")
        await handle.result(timeout=30)
        page = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/executions/worker-1")
        assert "COMPLETED" in page and "shipped (o-2: 1 items, 3.00 EUR)" in page
        runtimes = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/runtimes")
        assert settings.name in runtimes
    finally:
        assert await runtime.aterminate() == 0


def test_times_and_durations_read_as_a_person_would_say_them() -> None:
    from perdure.client.console import state, views

    assert views.human_time(0.0) == "—"
    assert (
        views.human_time(datetime(2026, 11, 30, 7, 5, 9, tzinfo=UTC).timestamp()) == "2026-11-30 07:05:09 UTC"
    )
    assert [views.human_duration(s) for s in (0.25, 4.21, 42, 200, 7500, 190_000)] == [
        "250 ms", "4.2 s", "42 s", "3 min 20 s", "2 h 5 min", "2 d 4 h",
    ]  # fmt: skip
    assert views.relative(100.0, now=112.0) == "12 s ago"
    assert views.relative(300.0, now=100.0) == "in 3 min 20 s"
    assert [state._ttl_seconds(t) for t in ("3s", "1m30s", "500ms", "12", "", "never")] == [
        3.0, 90.0, 0.5, 12.0, None, None,
    ]  # fmt: skip
    stamp = StoredMessage("s", 1, b"", time="2026-11-30T07:57:40.123456789Z")
    assert state.stored_time(stamp) == datetime(2026, 11, 30, 7, 57, 40, 123456, tzinfo=UTC)
    assert state.pretty_json(b'{"a":[1,2]}') == '{\n  "a": [\n    1,\n    2\n  ]\n}'
    assert state.pretty_json(b"not json") == "not json"
