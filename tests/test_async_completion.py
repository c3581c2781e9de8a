"""Async completion (issue 3): activities finished by whoever holds the token, from Python or
from any language over plain NATS requests; late, duplicate and malformed answers."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import msgspec
import nats
import pytest
from activity_workflows import GONE, approval, approve, impatient, late_answer, patient, stubborn, tokens

from perdure import ActivityClosed, Client, ExecutionNotFound, InvalidPayload, Settings, Worker
from perdure.runtime.events import (
    ActivityCancelRequested,
    ActivityCompleted,
    ActivityConcluded,
    ActivityScheduled,
    WorkflowCompleted,
    WorkflowStarted,
)
from perdure.runtime.tokens import decode_token, encode_token, new_nonce

from support import SubjectSpy, watch_history

# A client in another process that knows nothing of Perdure: nats-py and JSON only.
# Arguments: URL, then (subject, body) pairs; prints each reply's body on a line of its own.
PLAIN_NATS_CLIENT = """
import asyncio, sys
import nats

async def main():
    nc = await nats.connect(sys.argv[1])
    pairs = sys.argv[2:]
    for subject, body in zip(pairs[::2], pairs[1::2]):
        reply = await nc.request(subject, body.encode(), timeout=10)
        print(reply.data.decode(), flush=True)
    await nc.close()
    assert not [m for m in sys.modules if m.split(".")[0] == "perdure"], "imported perdure"

asyncio.run(main())
"""


async def plain_nats_requests(url: str, *requests: tuple[str, bytes | str]) -> list[dict[str, Any]]:
    """Send the requests from a separate nats-py-only process; its replies, decoded."""
    args = [arg for subject, body in requests for arg in (subject, _text(body))]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PLAIN_NATS_CLIENT,
        url,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    replies = [json.loads(line) for line in out.decode().splitlines()]
    assert len(replies) == len(requests), out
    return replies


def _text(body: bytes | str) -> str:
    return body.decode() if isinstance(body, bytes) else body


def body(**fields: Any) -> str:
    return json.dumps(fields)


async def next_token(execution_id: str) -> str:
    return await asyncio.wait_for(tokens(execution_id).get(), timeout=10)


async def test_complete_fail_and_heartbeat_from_a_plain_nats_process(
    settings: Settings, client: Client
) -> None:
    api = client.names.api
    async with Worker([approval, approve], settings=settings):
        approved = await client.start(approval, "new laptop", id="raw-complete")
        refused = await client.start(approval, "gold taps", id="raw-fail")
        t1, t2 = await next_token("raw-complete"), await next_token("raw-fail")
        assert t1.startswith("pd1.") and t1.isascii() and "/" not in t1 and "+" not in t1  # URL-safe
        replies = await plain_nats_requests(
            settings.url,
            (api("heartbeat"), body(token=t1, details={"reviewed": 3})),
            (api("complete"), body(token=t1, result=True)),
            (api("fail"), body(token=t2, error={"type": "PolicyViolation", "message": "no gold"})),
        )
        assert replies == [
            {"ok": True, "cancel_requested": False, "closed": False},
            {"ok": True},
            {"ok": True},
        ]
        assert await approved.result(timeout=10) == "approved"
        assert await refused.result(timeout=10) == "ActivityError PolicyViolation: no gold"


async def test_a_late_completion_after_a_timeout_is_refused(settings: Settings, client: Client) -> None:
    """The workflow sees ActivityTimeout; a later completion raises ActivityClosed
    (activity.closed), and the history never shows that activity completed."""
    async with Worker([late_answer, approve], settings=settings), watch_history(client) as history:
        handle = await client.start(late_answer, "expenses", id="late")
        first = await next_token("late")
        await history.wait_for(
            lambda w: any(isinstance(e, ActivityConcluded) and e.seq == 1 for e in w.events("late"))
        )
        second = await next_token("late")  # the workflow moved on: the second approval is open
        with pytest.raises(ActivityClosed) as caught:
            await client.complete_activity(first, True)
        assert caught.value.code == "activity.closed"
        late_beat = await client.heartbeat_activity(first, {"still": "thinking"})
        assert late_beat.closed and not late_beat.cancel_requested
        [raw] = await plain_nats_requests(
            settings.url, (client.names.api("complete"), body(token=first, result=True))
        )
        assert raw["ok"] is False and raw["error"]["code"] == "activity.closed", raw

        await approve.complete(client, second, True)
        assert await handle.result(timeout=10) == "ActivityTimeout, then approved"
        with pytest.raises(ActivityClosed):  # and once the execution is over
            await client.complete_activity(first, False)
        events = await handle.history()
    closed = {e.seq: e.outcome for e in events if isinstance(e, ActivityConcluded)}
    assert closed == {1: "timed_out", 2: "completed"}
    assert [e.seq for e in events if isinstance(e, ActivityCompleted)] == [2]


async def test_concurrent_completions_of_one_token_apply_once(
    nats_server: Any, settings: Settings, client: Client
) -> None:
    other = await Client.connect(settings.url, namespace=settings.namespace)
    try:
        async with Worker([approval, approve], settings=settings):
            handle = await client.start(approval, "budget", id="raced")
            token = await next_token("raced")
            # Ten answers at once over two connections, half approving, half rejecting.
            outcomes = await asyncio.gather(
                *[(client if i % 2 else other).complete_activity(token, i % 2 == 0) for i in range(10)],
                return_exceptions=True,
            )
            result = await handle.result(timeout=10)
            events = await handle.history()
    finally:
        await other.close()
    winners = [i for i, outcome in enumerate(outcomes) if outcome is None]
    assert len(winners) == 1, outcomes
    assert all(isinstance(o, ActivityClosed) for i, o in enumerate(outcomes) if i != winners[0]), outcomes
    assert result == ("approved" if winners[0] % 2 == 0 else "rejected")
    assert sum(isinstance(e, ActivityCompleted) for e in events) == 1


async def test_malformed_tokens_and_bodies_get_clear_errors(settings: Settings, client: Client) -> None:
    """Each gets {"ok": false} with a code naming the problem; the runtime stays up and the
    activity is still open: a normal completion afterwards is applied, once."""
    api = client.names.api
    async with Worker([approval, approve], settings=settings) as worker:
        handle = await client.start(approval, "desk", id="target")
        token = await next_token("target")
        data = decode_token(token)
        wrong_nonce = encode_token(msgspec.structs.replace(data, nonce=new_nonce()))
        wrong_activity = encode_token(msgspec.structs.replace(data, seq=7))
        unknown_execution = encode_token(msgspec.structs.replace(data, execution_id="no-such-execution"))
        bad_tokens = {
            "garbage": "hello world",
            "empty": "",
            "not base64": "pd1.***",
            "truncated": token[: len(token) // 2],
            "one char short": token[:-1],
            "wrong nonce": wrong_nonce,
            "wrong activity": wrong_activity,
        }
        cases: list[tuple[str, str, bytes | str, str]] = []
        for what, bad in bad_tokens.items():
            cases += [
                (f"complete, {what}", "complete", body(token=bad, result=True), "token.invalid"),
                (f"fail, {what}", "fail", body(token=bad, error={"message": "x"}), "token.invalid"),
                (f"heartbeat, {what}", "heartbeat", body(token=bad), "token.invalid"),
            ]
        for verb, request in (
            ("complete", body(token=unknown_execution, result=True)),
            ("fail", body(token=unknown_execution, error={"message": "x"})),
            ("heartbeat", body(token=unknown_execution)),
        ):
            cases.append((f"{verb}, unknown execution", verb, request, "execution.not_found"))
        for what, request in {
            "not JSON": b"approve it, please",
            "empty body": b"",
            "truncated JSON": body(token=token, result=True)[:-3],
            "a list": b"[1, 2, 3]",
            "no token": body(result=True),
            "token not a string": body(token=42, result=True),
            "token null": body(token=None),
        }.items():
            for verb in ("complete", "fail", "heartbeat"):
                cases.append((f"{verb}, {what}", verb, request, "payload.invalid"))
        cases += [
            ("fail, error is a string", "fail", body(token=token, error="boom"), "payload.invalid"),
            ("fail, no error", "fail", body(token=token), "payload.invalid"),
            (
                "fail, message not a string",
                "fail",
                body(token=token, error={"message": 1}),
                "payload.invalid",
            ),
        ]

        replies = await plain_nats_requests(settings.url, *[(api(verb), req) for _, verb, req, _ in cases])
        for (what, _, _, code), reply in zip(cases, replies, strict=True):
            assert reply["ok"] is False, (what, reply)
            assert reply["error"]["code"] == code, (what, reply)
            assert reply["error"]["message"], (what, reply)

        # Still up, nothing lost: the activity is open and a normal completion is applied once.
        assert worker.services.supervisor.failure is None
        status = await client.heartbeat_activity(token)
        assert (status.closed, status.cancel_requested) == (False, False)
        [ok] = await plain_nats_requests(settings.url, (api("complete"), body(token=token, result=True)))
        assert ok == {"ok": True}
        assert await handle.result(timeout=10) == "approved"
        events = await handle.history()
    assert [type(e) for e in events] == [
        WorkflowStarted,
        ActivityScheduled,
        ActivityCompleted,
        ActivityConcluded,
        WorkflowCompleted,
    ]


async def test_typed_complete_checks_the_result_type_before_sending(
    settings: Settings, client: Client
) -> None:
    sub, requests = await client.conn.subscribe(client.names.api("complete"))
    await client.conn.flush()
    try:
        async with Worker([approval, approve], settings=settings):
            handle = await client.start(approval, "chair", id="typed")
            token = await next_token("typed")
            for wrong in ("yes", 1, None, {"approved": True}):
                with pytest.raises(InvalidPayload, match="result of activity 'approve'"):
                    await approve.complete(client, token, wrong)
            await approve.complete(client, token, True)
            assert await handle.result(timeout=10) == "approved"
            # Only the well-typed completion was ever sent.
            first = await asyncio.wait_for(anext(requests), timeout=5)
            await client.conn.flush()
            assert json.loads(first.data) == {"token": token, "result": True}
    finally:
        await sub.stop()


async def test_heartbeats_after_the_activity_closed(settings: Settings, client: Client) -> None:
    """After completion, heartbeat_activity says closed; after the workflow abandoned the
    activity, it says closed and cancel_requested, and ctx.heartbeat raises ActivityGone;
    completed by its token while its worker runs on, ctx.heartbeat raises ActivityGone too."""
    async with Worker([approval, approve, impatient, patient, stubborn], settings=settings):
        done = await client.start(approval, "lamp", id="done")
        token = await next_token("done")
        await client.complete_activity(token, False)
        assert await done.result(timeout=10) == "rejected"
        after_completion = await client.heartbeat_activity(token, {"late": True})
        assert (after_completion.closed, after_completion.cancel_requested) == (True, False)

        abandoned = await client.start(impatient, 3, id="abandoned")
        stubborn_token = await next_token("abandoned")
        assert await abandoned.result(timeout=10) == "gave up"
        gone = await asyncio.wait_for(GONE["abandoned"].get(), timeout=10)
        assert gone.cancel_requested and gone.code == "activity.closed"
        assert "no longer wanted" in str(gone)
        after_cancel = await client.heartbeat_activity(stubborn_token)
        assert (after_cancel.closed, after_cancel.cancel_requested) == (True, True)
        [raw] = await plain_nats_requests(
            settings.url, (client.names.api("heartbeat"), body(token=stubborn_token))
        )
        assert raw == {"ok": True, "cancel_requested": True, "closed": True}
        events = await abandoned.history()

        # Completed by its token while the worker still runs it: its next heartbeat learns so.
        finished = await client.start(patient, 5, id="finished-elsewhere")
        await client.complete_activity(await next_token("finished-elsewhere"), 8)
        assert await finished.result(timeout=10) == 8
        elsewhere = await asyncio.wait_for(GONE["finished-elsewhere"].get(), timeout=10)
        assert not elsewhere.cancel_requested and "(closed)" in str(elsewhere)
    assert any(isinstance(e, ActivityCancelRequested) for e in events)
    assert [e.outcome for e in events if isinstance(e, ActivityConcluded)] == ["cancelled"]


async def test_a_result_of_the_wrong_type_is_refused(settings: Settings, client: Client) -> None:
    """A plain-NATS result that does not decode as the activity's declared type is refused
    (payload.invalid) and the activity stays open for a correct answer."""
    api = client.names.api
    async with Worker([approval, approve], settings=settings):
        handle = await client.start(approval, "sofa", id="wrong-type")
        token = await next_token("wrong-type")
        [wrong] = await plain_nats_requests(settings.url, (api("complete"), body(token=token, result="yes")))
        assert wrong["ok"] is False and wrong["error"]["code"] == "payload.invalid", wrong
        await approve.complete(client, token, True)
        assert await handle.result(timeout=10) == "approved"


async def test_a_heartbeat_before_the_attempts_record_is_stored_is_told_it_is_open(
    settings: Settings, client: Client
) -> None:
    """The record of an attempt is stored on another stream than its work item, so a fast
    worker can heartbeat before it exists: the answer is 'open' (the activity is in history,
    not closed), never 'closed'. A token for attempt 2 of an open activity, whose record is
    not written yet, shows that path deterministically."""
    async with Worker([approval, approve], settings=settings):
        handle = await client.start(approval, "bench", id="early")
        token = await next_token("early")
        next_attempt = encode_token(msgspec.structs.replace(decode_token(token), attempt=2))
        early = await client.heartbeat_activity(next_attempt)
        assert (early.closed, early.cancel_requested) == (False, False)
        await client.complete_activity(token, True)
        assert await handle.result(timeout=10) == "approved"
        late = await client.heartbeat_activity(next_attempt)  # now it is closed in history
        assert (late.closed, late.cancel_requested) == (True, False)


async def test_a_completion_needs_history_not_the_index_entry(settings: Settings, client: Client) -> None:
    """The executions index is written with a step's effects, after its append: an eager
    activity may hand its token over, and be completed, before the entry is stored. The
    completion service goes by history, the source of truth (here: the entry is removed, and
    the runtime serving the completion is a new one, which does not hold the execution)."""
    async with Worker([approval, approve], settings=settings):
        handle = await client.start(approval, "budget", id="unindexed")
        token = await next_token("unindexed")
    names = client.names
    purge = {"filter": f"$KV.{names.executions_bucket}.unindexed"}
    await client.conn.request(
        f"$JS.API.STREAM.PURGE.KV_{names.executions_bucket}", json.dumps(purge).encode()
    )
    async with Worker([approval, approve], settings=settings) as worker:
        assert not worker.holds("unindexed")
        async with ExistenceReads(client, "unindexed") as reads:
            await client.complete_activity(token, True)
        assert reads.subjects_read  # it looked (index, inbox, history) before forwarding
        assert await handle.result(timeout=10) == "approved"
        # Neither index entry nor history: still refused.
        unknown = msgspec.structs.replace(decode_token(token), execution_id="unknown-one")
        with pytest.raises(ExecutionNotFound, match="unknown-one"):
            await client.complete_activity(encode_token(unknown), True)


async def test_a_runtime_holding_the_execution_forwards_a_completion_without_a_read(
    settings: Settings, client: Client
) -> None:
    """The runtime that serves the completion runs the workflow whose activity handed the
    token over: the execution exists, so the outcome goes to its inbox without reading its
    index entry, inbox or history first (a round trip less on every async completion)."""
    async with Worker([approval, approve], settings=settings) as worker:
        handle = await client.start(approval, "budget", id="held")
        token = await next_token("held")
        assert worker.holds("held")
        async with ExistenceReads(client, "held") as reads:
            await client.complete_activity(token, True)
        assert reads.subjects_read == []
        assert await handle.result(timeout=10) == "approved"


class ExistenceReads(SubjectSpy):
    """The direct gets of one execution's index entry, inbox or history, as the server sees them."""

    def __init__(self, client: Client, execution_id: str) -> None:
        self.execution_id = execution_id
        names = client.names
        streams = (names.kv_stream(names.executions_bucket), names.inbox_stream, names.history_stream)
        self.subjects_read: list[str] = []
        super().__init__(client.conn.connected_url, [f"$JS.API.DIRECT.GET.{stream}" for stream in streams])

    async def on_message(self, msg: nats.aio.msg.Msg) -> None:
        if self.execution_id.encode() in msg.data:
            self.subjects_read.append(msg.subject)
