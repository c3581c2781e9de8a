"""Issue 11: every log line of an execution or an activity attempt carries ``execution_id``
and ``run``, and an attempt's also ``activity``, ``activity_id`` and ``attempt`` (structlog
contextvars), runtime lines and user code's alike; and nothing of one execution leaks into
another's lines or into the runtime's own."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from log_context_workflows import logged, renewed

from perdure import Client, EmbeddedServer

from support import RuntimeProcess

IDS = ("log-a", "log-b", "log-c")  # concurrent: a leak would show the wrong id
ACTIVITIES = {"remote_flaky", "local_flaky", "sync_flaky"}
ATTEMPT_KEYS = ("activity", "activity_id", "attempt")


def _mentions(line: dict[str, Any]) -> set[str]:
    """The executions a line names in any of its values."""
    text = json.dumps({k: v for k, v in line.items() if k != "execution_id"})
    return {execution_id for execution_id in IDS if f'"{execution_id}' in text or f":{execution_id}" in text}


async def test_every_line_of_an_execution_and_an_attempt_carries_its_context(
    nats_server: EmbeddedServer, namespace: str, client: Client
) -> None:
    runtime = RuntimeProcess(
        nats_server.url, namespace, "logctx", targets=("log_context_workflows",), extra_args=("--log-json",)
    )
    await runtime.astart()
    try:
        handles = [await client.start(logged, execution_id, id=execution_id) for execution_id in IDS]
        assert await asyncio.gather(*[h.result(timeout=60) for h in handles]) == [4] * len(IDS)
        assert await runtime.aterminate() == 0
    finally:
        runtime.kill()
    lines = [json.loads(text) for text in runtime.output().splitlines()]

    ours = [line for line in lines if "execution_id" in line]
    for line in lines:  # a line about an execution is bound to it, and to no other
        named = _mentions(line)
        assert named <= {line.get("execution_id")}, line
    for line in ours:
        assert line["execution_id"] in IDS, line
        assert line.get("run") == 1, line
        if line["event"].startswith(("activity.", "eager.", "user.activity")):
            assert all(key in line for key in ATTEMPT_KEYS), line
    for line in lines:  # the runtime's own lines carry no execution's context
        if line["event"].startswith(("runtime.", "worker.", "partition.")):
            assert not any(key in line for key in ("execution_id", "run", *ATTEMPT_KEYS)), line

    user_workflow = [line for line in lines if line["event"] == "user.workflow"]
    assert {(line["seen_execution_id"], line["where"]) for line in user_workflow} == {
        (execution_id, where) for execution_id in IDS for where in ("start", "between", "end")
    }
    for line in user_workflow:
        assert (line.get("execution_id"), line.get("run")) == (line["seen_execution_id"], 1), line

    user_activity = [line for line in lines if line["event"] == "user.activity"]
    assert {
        (line["seen_execution_id"], line["seen_activity"], line["seen_attempt"]) for line in user_activity
    } == {(execution_id, name, attempt) for execution_id in IDS for name in ACTIVITIES for attempt in (1, 2)}
    for line in user_activity:
        seen = (
            line["seen_execution_id"],
            1,
            line["seen_activity"],
            line["seen_activity_id"],
            line["seen_attempt"],
        )
        assert tuple(line.get(key) for key in ("execution_id", "run", *ATTEMPT_KEYS)) == seen, line

    failed = [line for line in lines if line["event"] == "activity.failed"]
    assert {(line.get("execution_id"), line.get("activity"), line.get("attempt")) for line in failed} == {
        (execution_id, name, 1) for execution_id in IDS for name in ACTIVITIES
    }


async def test_text_lines_carry_the_run_a_new_run_is_at(
    nats_server: EmbeddedServer, namespace: str, client: Client
) -> None:
    """Without ``--log-json`` (key=value text); after ``continue_as_new`` the lines say run 2."""
    runtime = RuntimeProcess(nats_server.url, namespace, "logtext", targets=("log_context_workflows",))
    await runtime.astart()
    try:
        assert await (await client.start(renewed, 2, id="log-r")).result(timeout=60) == 2
        assert await runtime.aterminate() == 0
    finally:
        runtime.kill()
    lines = runtime.output().splitlines()
    for run in (1, 2):
        (line,) = [line for line in lines if "user.workflow" in line and f"seen_run={run}" in line]
        assert "execution_id=log-r" in line and f" run={run}" in line, line
    (new_run,) = [line for line in lines if "execution.new_run" in line]
    assert "execution_id=log-r" in new_run and " run=2" in new_run, new_run
