"""``perdure start|result|describe|list|history|signal|query|cancel|terminate|complete|fail|
heartbeat|watch`` (issue 11, "CLI"): real ``perdure`` processes against a real nats-server and
a runtime process, checked with the client; both output modes; the exit statuses."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from perdure import Client, EmbeddedServer
from perdure.runtime.embedded import free_port

from support import TESTS_DIR, RuntimeProcess, run_perdure


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self) -> object:
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"<exit {self.code}\nstdout: {self.out[-2000:]}\nstderr: {self.err[-2000:]}>"


class Env:
    """The namespace's runtime and a client, and ``perdure`` run as a user would."""

    def __init__(self, url: str, namespace: str, client: Client) -> None:
        self.url, self.namespace, self.client = url, namespace, client

    async def __call__(self, *args: str, timeout: float = 60.0, env: dict[str, str] | None = None) -> Run:
        # Connection settings through the PERDURE_* variables, as `perdure worker` reads them.
        return Run(
            *await run_perdure(*args, url=self.url, namespace=self.namespace, timeout=timeout, **(env or {}))
        )

    def spawn(self, *args: str) -> asyncio.Future[Run]:
        return asyncio.ensure_future(self(*args))


@pytest.fixture(scope="module")
async def cli(nats_server: EmbeddedServer) -> AsyncIterator[Env]:
    namespace = "cli" + uuid.uuid4().hex[:10]
    runtime = await RuntimeProcess(
        nats_server.url, namespace, f"rt-{namespace}", targets=("cli_workflows",)
    ).astart()
    client = await Client.connect(nats_server.url, namespace=namespace)
    try:
        yield Env(nats_server.url, namespace, client)
    finally:
        await client.close()
        runtime.kill()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def wait_status(client: Client, execution_id: str, status: str, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        async for described in client.get_handle(execution_id).watch():
            if described.status == status:
                return


# ---------------------------------------------------------------- start, result, describe


async def test_start_wait_prints_the_result_and_exits_0(cli: Env) -> None:
    run = await cli("start", "greet", "--input", '"ada"', "--wait")
    assert run.code == 0, run
    assert json.loads(run.out) == "hello ada"

    execution_id = new_id("greet")
    run = await cli("start", "greet", "--input", '"bob"', "--id", execution_id, "--wait", "--json")
    assert run.code == 0, run
    doc = run.json()
    assert isinstance(doc, dict)
    assert doc["execution_id"] == execution_id and doc["status"] == "COMPLETED"
    assert doc["result"] == "hello bob" and doc["workflow"] == "greet" and doc["error"] is None
    assert doc["started_at"].endswith("Z") and doc["closed_at"].endswith("Z")
    assert await cli.client.get_handle(execution_id).result(timeout=5) == "hello bob"


async def test_start_without_wait_then_result_and_describe(cli: Env) -> None:
    execution_id = new_id("later")
    run = await cli("start", "greet", "--input", '"cy"', "--id", execution_id, "--json")
    assert run.code == 0, run
    assert run.json() == {"execution_id": execution_id, "workflow": "greet"}
    run = await cli("result", execution_id, "--timeout", "20")
    assert (run.code, json.loads(run.out)) == (0, "hello cy"), run

    run = await cli("describe", execution_id)
    assert run.code == 0, run
    assert execution_id in run.out and "COMPLETED" in run.out
    assert re.search(r"Started: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \((just now|.* ago)\)", run.out), run
    run = await cli("describe", execution_id, "--json")
    doc = run.json()
    assert isinstance(doc, dict)
    assert set(doc) == {
        "execution_id", "workflow", "status", "run", "started_at", "closed_at", "history_length", "error",
    }  # fmt: skip
    assert doc["status"] == "COMPLETED" and doc["history_length"] >= 1


async def test_a_failing_workflow_exits_1(cli: Env) -> None:
    execution_id = new_id("boom")
    run = await cli("start", "boom", "--input", '"kaput"', "--id", execution_id, "--wait")
    assert run.code == 1, run
    assert "kaput" in run.err and len(run.err.strip().splitlines()) == 1
    run = await cli("result", execution_id, "--json")
    assert run.code == 1, run
    doc = run.json()
    assert isinstance(doc, dict)
    assert doc["status"] == "FAILED" and doc["error"]["message"] == "kaput" and doc["result"] is None
    run = await cli("describe", "no-such-execution")
    assert run.code == 1 and "execution.not_found" in run.err, run


async def test_bad_url_and_bad_json_exit_2_with_one_line(cli: Env) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    run = await cli("list", "--url", dead, "--connect-timeout", "2")
    assert run.code == 2, run
    assert len(run.err.strip().splitlines()) == 1 and run.err.startswith("perdure: "), run
    run = await cli("start", "greet", "--input", "{not json")
    assert run.code == 2, run
    assert len(run.err.strip().splitlines()) == 1 and "--input is not JSON" in run.err, run
    run = await cli("list", "--since", "yesterday-ish")
    assert run.code == 2 and len(run.err.strip().splitlines()) == 1, run
    run = await cli("cancel")  # neither an id nor a filter
    assert run.code == 2, run


# ---------------------------------------------------------------- list


async def test_list_filters_and_json_fields(cli: Env) -> None:
    since = time.time()
    await asyncio.sleep(0.01)
    ok = [new_id("ok") for _ in range(3)]
    bad = new_id("bad")
    for execution_id in ok:
        await cli.client.start("greet", "x", id=execution_id)
    await cli.client.start("boom", "no", id=bad)
    for execution_id in ok:
        await cli.client.get_handle(execution_id).result(timeout=20)
    await wait_status(cli.client, bad, "FAILED")
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since))

    run = await cli("list", "--workflow", "greet", "--since", start, "--json", "--limit", "0")
    assert run.code == 0, run
    rows = run.json()
    assert isinstance(rows, list)
    assert {r["execution_id"] for r in rows} >= set(ok) and bad not in {r["execution_id"] for r in rows}
    assert all(r["workflow"] == "greet" for r in rows)
    assert set(rows[0]) == {
        "execution_id", "workflow", "status", "run", "started_at", "closed_at", "history_length", "error",
        "revision",
    }  # fmt: skip
    # Most recently changed first: descending index revision (the paging cursor).
    revisions = [r["revision"] for r in rows]
    assert revisions == sorted(revisions, reverse=True) and len(set(revisions)) == len(revisions)
    for r in rows:
        stored = await cli.client.index.get(r["execution_id"])
        assert stored is not None and stored.seq == r["revision"]

    run = await cli("list", "--status", "FAILED", "--since", "1h", "--json")
    failed = {r["execution_id"] for r in run.json()}  # type: ignore[union-attr]
    assert bad in failed and not failed & set(ok)

    run = await cli("list", "--workflow", "greet", "--since", start, "--limit", "2")
    assert run.code == 0, run
    header, *lines = run.out.strip().splitlines()
    assert header.split()[:3] == ["ID", "WORKFLOW", "STATUS"]
    assert len([ln for ln in lines if ln.split()[1:2] == ["greet"]]) == 2
    assert "--limit 0 shows all" in lines[-1]
    # Aligned: the STATUS column starts at the same offset on every row.
    col = header.index("STATUS")
    assert all(ln[col:].startswith("COMPLETED") for ln in lines[:2]), run.out


# ---------------------------------------------------------------- history, watch


async def test_history_timeline_and_jsonl_accepted_by_replay(cli: Env, tmp_path: Path) -> None:
    execution_id = new_id("hist")
    await cli.client.start("gatekeeper", "door", id=execution_id)
    await cli.client.signal(execution_id, "open", "k1")
    assert await cli.client.get_handle(execution_id).result(timeout=20) == "door opened with k1"

    run = await cli("history", execution_id)
    assert run.code == 0, run
    assert run.out.startswith("#1 ")
    assert "workflow.started" in run.out and '"input":"door"' in run.out
    assert "signal.received" in run.out and '"payload":"k1"' in run.out
    assert "workflow.completed" in run.out

    run = await cli("history", execution_id, "--json")
    doc = run.json()
    assert isinstance(doc, dict)
    kinds = [e["kind"] for s in doc["steps"] for e in s["inputs"] + s["decisions"]]
    assert kinds[0] == "workflow.started" and kinds[-1] == "workflow.completed"
    assert [s["step"] for s in doc["steps"]] == list(range(1, len(doc["steps"]) + 1))

    run = await cli("history", execution_id, "--jsonl")
    assert run.code == 0, run
    exported = tmp_path / "history.jsonl"
    exported.write_text(run.out)
    assert len(run.out.splitlines()) == len(await cli.client.get_handle(execution_id).history_steps())
    replay = await cli("replay", "cli_workflows", "--file", str(exported), env={"PYTHONPATH": str(TESTS_DIR)})
    assert replay.code == 0, replay
    assert "OK" in replay.out or "ok" in replay.out.lower(), replay


async def test_watch_prints_events_and_exits_when_the_execution_closes(cli: Env) -> None:
    execution_id = new_id("watch")
    await cli.client.start("gatekeeper", "gate", id=execution_id)
    await wait_status(cli.client, execution_id, "RUNNING")
    watching = cli.spawn("watch", execution_id)
    await asyncio.sleep(0)  # the watch may start before or after the signal: both must work
    await cli.client.signal(execution_id, "open", "w1")
    run = await asyncio.wait_for(watching, 30)
    assert run.code == 0, run
    assert "workflow.started" in run.out and "signal.received" in run.out
    assert run.out.strip().splitlines()[-1] == f"{execution_id} COMPLETED"

    failing = new_id("watchfail")
    await cli.client.start("boom", "bad", id=failing)
    await wait_status(cli.client, failing, "FAILED")
    run = await cli("watch", failing, "--json")
    assert run.code == 1, run
    last = json.loads(run.out.strip().splitlines()[-1])
    assert last["status"] == "FAILED"


# ---------------------------------------------------------------- signal, query, cancel, terminate


async def test_signal_and_query(cli: Env) -> None:
    execution_id = new_id("sig")
    await cli.client.start("gatekeeper", "front", id=execution_id)
    await wait_status(cli.client, execution_id, "RUNNING")
    run = await cli("query", execution_id, "state")
    assert (run.code, json.loads(run.out)) == (0, "waiting"), run
    run = await cli("query", execution_id, "state", "--args", '["now "]', "--json")
    assert run.json() == {"execution_id": execution_id, "query": "state", "result": "now waiting"}
    run = await cli("query", execution_id, "no_such_query")
    assert run.code == 1, run

    run = await cli("signal", execution_id, "open", "--payload", '"s3"', "--signal-id", "once", "--json")
    assert run.code == 0, run
    assert run.json() == {"ok": True, "verb": "signal", "execution_id": execution_id, "signal": "open"}
    run = await cli("signal", execution_id, "open", "--payload", '"s4"', "--signal-id", "once")
    assert (run.code, run.out.strip()) == (0, f"sent signal 'open' to {execution_id}"), run
    # Sent twice with one --signal-id: the workflow saw it once, with the first payload.
    assert await cli.client.get_handle(execution_id).result(timeout=20) == "front opened with s3"
    history = await cli.client.get_handle(execution_id).history()
    assert [type(e).__name__ for e in history].count("SignalReceived") == 1
    run = await cli("signal", "no-such-execution", "open")
    assert run.code == 1 and "execution.not_found" in run.err, run


async def test_cancel_and_terminate(cli: Env) -> None:
    to_cancel, to_terminate = new_id("cancel"), new_id("term")
    for execution_id in (to_cancel, to_terminate):
        await cli.client.start("gatekeeper", "x", id=execution_id)
        await wait_status(cli.client, execution_id, "RUNNING")
    run = await cli("cancel", to_cancel, "--reason", "not needed", "--json")
    assert run.code == 0 and run.json() == {"ok": True, "verb": "cancel", "execution_id": to_cancel}, run
    await wait_status(cli.client, to_cancel, "CANCELLED")
    run = await cli("terminate", to_terminate, "--reason", "stuck", "--json")
    assert run.code == 0 and run.json() == {"ok": True, "verb": "terminate", "execution_id": to_terminate}
    await wait_status(cli.client, to_terminate, "TERMINATED")
    assert "stuck" in str((await cli.client.describe(to_terminate)).error)
    run = await cli("terminate", "no-such-execution")
    assert run.code == 1, run
    again = new_id("cancel")
    await cli.client.start("gatekeeper", "y", id=again)
    await wait_status(cli.client, again, "RUNNING")
    run = await cli("cancel", again)
    assert (run.code, run.out.strip()) == (0, f"asked {again} to cancel"), run
    await wait_status(cli.client, again, "CANCELLED")


# ---------------------------------------------------------------- async activity tokens


async def _token(cli: Env, tmp_path: Path) -> tuple[str, str]:
    path = tmp_path / f"token-{uuid.uuid4().hex[:6]}"
    execution_id = new_id("tok")
    await cli.client.start("by_token", str(path), id=execution_id)
    async with asyncio.timeout(20):
        # Another process writes the file: there is no event to await, so look again.
        while not path.exists() or not path.read_text():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return execution_id, path.read_text()


async def test_complete_heartbeat_and_fail_by_token(cli: Env, tmp_path: Path) -> None:
    execution_id, token = await _token(cli, tmp_path)
    run = await cli("heartbeat", token, "--details", '{"done": 3}', "--json")
    assert run.code == 0, run
    assert run.json() == {"ok": True, "verb": "heartbeat", "cancel_requested": False, "closed": False}
    run = await cli("heartbeat", token)
    assert (run.code, run.out.strip()) == (0, "heartbeat recorded (cancel requested: no, closed: no)"), run
    run = await cli("complete", token, "--result", '"yes"', "--json")
    assert run.code == 0 and run.json() == {"ok": True, "verb": "complete"}, run
    assert await cli.client.get_handle(execution_id).result(timeout=20) == "completed with yes"
    run = await cli("complete", token, "--result", '"again"')
    assert run.code == 1 and "activity.closed" in run.err, run
    run = await cli("heartbeat", token, "--json")  # the activity closed: it says so
    assert run.code == 0 and run.json()["closed"] is True, run  # type: ignore[index]

    execution_id, token = await _token(cli, tmp_path)
    run = await cli("fail", token, "--type", "Refused", "--message", "no budget")
    assert (run.code, run.out.strip()) == (0, "failed the activity (Refused: no budget)"), run
    assert await cli.client.get_handle(execution_id).result(timeout=20) == "failed Refused: no budget"
    run = await cli("complete", "not-a-token")
    assert run.code == 1, run


# ---------------------------------------------------------------- bulk


async def test_bulk_cancel_dry_run_changes_nothing_and_yes_cancels_them_all(cli: Env) -> None:
    ids = [new_id("bulk") for _ in range(4)]
    for execution_id in ids:
        await cli.client.start("gatekeeper", "bulk", id=execution_id)
    for execution_id in ids:
        await wait_status(cli.client, execution_id, "RUNNING")
    since = "5m"
    run = await cli("cancel", "--status", "RUNNING", "--workflow", "gatekeeper", "--since", since, "--json")
    assert run.code == 0, run
    doc = run.json()
    assert isinstance(doc, dict)
    assert doc["dry_run"] is True and set(ids) <= set(doc["ids"]) and doc["matched"] == len(doc["ids"])
    matched = doc["matched"]
    run = await cli("cancel", "--status", "RUNNING", "--workflow", "gatekeeper", "--since", since)
    assert f"would cancel {matched} execution(s)" in run.out, run
    for execution_id in ids:
        assert (await cli.client.describe(execution_id)).status == "RUNNING"

    run = await cli("signal", "open", "--workflow", "gatekeeper", "--status", "RUNNING", "--since", since)
    assert run.code == 0 and f"would signal 'open' {matched}" in run.out, run

    run = await cli("cancel", "--status", "RUNNING", "--workflow", "gatekeeper", "--since", since, "--yes")
    assert run.code == 0, run
    assert f"cancel: {matched} of {matched} done" in run.out
    assert f"] {matched}/{matched} cancel" in run.err  # the progress bar's last state
    for execution_id in ids:
        await wait_status(cli.client, execution_id, "CANCELLED")
    run = await cli("cancel", "--status", "RUNNING", "--workflow", "gatekeeper", "--since", since, "--json")
    assert run.json()["matched"] == 0  # type: ignore[index]


async def test_bulk_signal_and_terminate_with_yes(cli: Env) -> None:
    opened, ended = [new_id("bsig") for _ in range(3)], [new_id("bterm") for _ in range(2)]
    for execution_id in opened:
        await cli.client.start("gatekeeper", "bulk", id=execution_id)
    for execution_id in opened:
        await wait_status(cli.client, execution_id, "RUNNING")
    filters = ("--workflow", "gatekeeper", "--status", "RUNNING", "--since", "5m")
    run = await cli("signal", "open", *filters, "--payload", '"all"', "--signal-id", "b1", "--yes", "--json")
    assert run.code == 0, run
    doc = run.json()
    assert isinstance(doc, dict)
    assert doc["dry_run"] is False and doc["failed"] == [] and doc["done"] == doc["matched"] >= 3
    for execution_id in opened:
        assert await cli.client.get_handle(execution_id).result(timeout=20) == "bulk opened with all"

    for execution_id in ended:
        await cli.client.start("gatekeeper", "bulk", id=execution_id)
    for execution_id in ended:
        await wait_status(cli.client, execution_id, "RUNNING")
    run = await cli("terminate", *filters, "--reason", "cleanup", "--yes")
    assert run.code == 0, run
    for execution_id in ended:
        await wait_status(cli.client, execution_id, "TERMINATED")
