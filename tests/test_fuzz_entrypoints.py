"""Fuzzing every external entry point (Hypothesis) against one real nats-server and a runtime in
this process (issue 10, "What it must show").

* The request subjects the runtime serves (``<ns>.api.complete``, ``fail``, ``heartbeat``,
  ``signal``, served by actors/completion.py, and ``<ns>.api.query.<partition>``, served by
  actors/worker.py) get random bytes, JSON of the wrong shape, and requests of the right
  shape that are wrong: random, truncated, altered and forged tokens, unknown executions.
  Each request must be answered, within a bound, ``{"ok": false, "error": {"code": ...}}``
  with a code the error tree knows (and the code that says what is wrong where that is clear).
* The inbox (``<ns>.inbox.<id>``) and work (``<ns>.work.<activity>``) subjects get random
  bytes and wire structs with garbage in them, for new executions and for a live one.

Afterwards the runtime must still do its work: the live execution, whose async activity was
held open all along, completes with its real token, and a new workflow completes.

Examples are bounded so that the module takes well under a minute.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from fuzz_strategies import (
    BAD_IDS,
    IDS,
    RAW_JSON,
    VERBS,
    garbage_json,
    inbox_messages,
    mutated_token,
    work_items,
)
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from perdure import (
    ActivityContext,
    Client,
    EmbeddedServer,
    Settings,
    Worker,
    activity,
    make_async,
    sleep,
    workflow,
)
from perdure.runtime import codec
from perdure.runtime.errors import ErrorInfo, RemoteError, from_info
from perdure.runtime.messages import (
    CompleteRequest,
    FailRequest,
    HeartbeatRequest,
    QueryRequest,
    RemoteFailure,
    SignalRequest,
)
from perdure.runtime.nats_client import nats_core
from perdure.runtime.tokens import TokenData, decode_token, encode_token

# Codes a reply may carry: those of the error tree (``from_info`` maps any other code to a
# RemoteError), and the two the query path answers with, which have no class there.
QUERY_CODES = {"query.unknown", "query.failed"}


def known(code: str) -> bool:
    return code in QUERY_CODES or not isinstance(from_info(ErrorInfo(code=code, message="")), RemoteError)


REQUEST_BOUND = 5.0  # seconds: an answer later than this is a hang
DRAIN_BOUND = 15.0  # seconds for the runtime to deal with the garbage on inbox and work subjects

tokens: asyncio.Queue[str] = asyncio.Queue()


@activity
async def fuzz_hold(x: int, ctx: ActivityContext) -> int:
    await tokens.put(ctx.token)
    return make_async()


@activity
async def fuzz_double(x: int) -> int:
    return 2 * x


@workflow
async def fuzz_held(x: int) -> int:
    """A live execution all through the fuzzing: its async activity is held open."""
    return await fuzz_hold(x) + 1


@workflow
async def fuzz_normal(x: int) -> int:
    a = await fuzz_double(x)
    await sleep(0.2)
    return a + await fuzz_double(a)


@dataclass
class Target:
    client: Client
    worker: Worker
    token: str
    held: Any  # the handle of the live execution

    @property
    def names(self) -> Any:
        return self.client.names


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def target(nats_server: EmbeddedServer) -> AsyncIterator[Target]:
    namespace = "f" + uuid.uuid4().hex[:12]
    settings_ = Settings(url=nats_server.url, namespace=namespace, name=f"rt-{namespace}")
    client = await Client.connect(nats_server.url, namespace=namespace)
    worker = Worker([fuzz_held, fuzz_normal, fuzz_hold, fuzz_double], settings=settings_)
    await worker.start()
    try:
        held = await client.start(fuzz_held, 20, id="held")
        token = await asyncio.wait_for(tokens.get(), 20)
        yield Target(client, worker, token, held)
    finally:
        await worker.stop()
        await client.close()


FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -------------------------------------------------------------------------- the checks


async def ask(target: Target, verb: str, body: bytes) -> dict[str, Any]:
    """One request, answered within the bound; its reply as JSON."""
    subject = target.names.api(verb)
    try:
        data = await asyncio.wait_for(
            target.client.conn.request(subject, body, timeout=REQUEST_BOUND), REQUEST_BOUND + 1
        )
    except Exception as exc:
        pytest.fail(f"{subject} did not answer {body[:200]!r} within {REQUEST_BOUND} s: {exc!r}")
    try:
        reply = msgspec.json.decode(data)
    except msgspec.DecodeError:
        pytest.fail(f"{subject} answered {body[:200]!r} with something that is not JSON: {data[:200]!r}")
    return reply


def refused(reply: dict[str, Any], *, verb: str, body: bytes, codes: set[str] | None = None) -> str:
    """The reply is a refusal with a known code (one of ``codes``, if given); returns the code."""
    assert isinstance(reply, dict) and reply.get("ok") is False, (verb, body[:200], reply)
    error = reply.get("error")
    assert isinstance(error, dict) and isinstance(error.get("code"), str), (verb, body[:200], reply)
    code = error["code"]
    assert known(code), (verb, body[:200], reply)
    assert codes is None or code in codes, (verb, body[:200], reply)
    if currently_in_test_context():
        event(f"{verb}: {code}")
    return code


# Every request subject the runtime serves; queries are served per partition (12 by default).
# ------------------------------------------------------------------------ api subjects


@FUZZ
@given(verb=VERBS, body=st.binary(max_size=200))
async def test_api_random_bytes_are_refused_as_invalid_payloads(
    target: Target, verb: str, body: bytes
) -> None:
    reply = await ask(target, verb, body)
    refused(reply, verb=verb, body=body, codes={"payload.invalid"})


@FUZZ
@given(verb=VERBS, body=garbage_json())
async def test_api_json_of_the_wrong_shape_is_refused_as_an_invalid_payload(
    target: Target, verb: str, body: bytes
) -> None:
    reply = await ask(target, verb, body)
    refused(reply, verb=verb, body=body, codes={"payload.invalid"})


@FUZZ
@given(data=st.data())
async def test_api_wrong_tokens_are_refused(target: Target, data: st.DataObject) -> None:
    """Right shape, wrong token: never accepted, always a clear refusal."""
    token = data.draw(mutated_token(target.token), label="token")
    verb = data.draw(st.sampled_from(["complete", "fail", "heartbeat"]), label="verb")
    if verb == "complete":
        body = codec.encode(CompleteRequest(token=token, result=data.draw(RAW_JSON)))
    elif verb == "fail":
        error = data.draw(st.builds(RemoteFailure, type=st.text(max_size=20), message=st.text(max_size=40)))
        body = codec.encode(FailRequest(token=token, error=error))
    else:
        body = codec.encode(HeartbeatRequest(token=token, details=data.draw(RAW_JSON)))
    reply = await ask(target, verb, body)
    refused(reply, verb=verb, body=body, codes={"token.invalid", "execution.not_found", "activity.closed"})


@FUZZ
@given(run=st.integers(1, 4), seq=st.integers(1, 4), verb=st.sampled_from(["complete", "fail", "heartbeat"]))
async def test_api_forged_tokens_for_the_live_execution_are_invalid_tokens(
    target: Target, run: int, seq: int, verb: str
) -> None:
    """A well-formed token naming the live execution and the real nonce, with another run or
    activity, names no activity the execution has: ``token.invalid`` (issue 10 item 7), not
    ``activity.closed``, and never accepted."""
    real = decode_token(target.token)
    forged = TokenData(real.execution_id, run, seq, real.attempt, real.nonce)
    assume(forged != real)
    token = encode_token(forged)
    bodies = {
        "complete": CompleteRequest(token=token, result=msgspec.Raw(b"1")),
        "fail": FailRequest(token=token, error=RemoteFailure(message="forged")),
        "heartbeat": HeartbeatRequest(token=token),
    }
    body = codec.encode(bodies[verb])
    refused(await ask(target, verb, body), verb=verb, body=body, codes={"token.invalid"})


@FUZZ
@given(
    execution_id=IDS | BAD_IDS,
    name=st.text(max_size=20),
    payload=RAW_JSON,
    verb=st.sampled_from(["signal", "query.0", "query.7"]),
)
async def test_api_requests_for_executions_that_do_not_exist_are_refused(
    target: Target, execution_id: str, name: str, payload: msgspec.Raw, verb: str
) -> None:
    if execution_id == target.held.id:
        execution_id += "-not"
    if verb == "signal":
        body = codec.encode(SignalRequest(execution_id=execution_id, name=name, payload=payload))
    else:
        body = codec.encode(QueryRequest(execution_id=execution_id, name=name, args=payload))
    reply = await ask(target, verb, body)
    refused(reply, verb=verb, body=body, codes={"execution.not_found", "payload.invalid"})


# ------------------------------------------------------------------ inbox and work subjects


INBOX_FUZZ = settings(FUZZ, max_examples=40)


@INBOX_FUZZ
@given(execution_id=IDS, body=inbox_messages(), live=st.booleans())
async def test_inbox_garbage_is_stored_or_refused(
    target: Target, execution_id: str, body: bytes, live: bool
) -> None:
    """Anyone may publish to an inbox subject: the stream stores it; what the runtime does with
    it is checked by the next tests. (A cancel or terminate is a legitimate order, not
    garbage: they are not sent to the live execution.)"""
    subject = target.names.inbox(target.held.id if live else execution_id)
    await target.client.conn.publish(subject, body)


@INBOX_FUZZ
@given(body=st.binary(max_size=60) | st.text(max_size=30).map(str.encode))
async def test_ownership_notices_with_garbage_are_ignored(target: Target, body: bytes) -> None:
    """``<ns>.api.ownership.changed`` is a notice between runtimes (no reply): garbage there
    may wake the ownership tick, and must do nothing else (checked by the tests after)."""
    await target.client.conn.publish_core(target.names.api("ownership.changed"), body)


@INBOX_FUZZ
@given(body=work_items())
async def test_work_garbage_is_stored(target: Target, body: bytes) -> None:
    await target.client.conn.publish(target.names.work("fuzz_double"), body)


async def test_after_the_garbage_the_inbox_and_work_streams_drain(target: Target) -> None:
    """Every garbage message is dealt with (absorbed, refused, or dead-lettered), not left
    stored to be redelivered for ever. The live execution has nothing pending by now either
    (its activity's token is not used until the next test)."""
    js = nats_core(target.client.conn).jetstream()
    names = target.names
    left: dict[str, dict[str, int]] = {}
    try:
        async with asyncio.timeout(DRAIN_BOUND):
            while True:
                for stream in (names.inbox_stream, names.work_stream):
                    info = await js.stream_info(stream, subjects_filter=">")
                    left[stream] = dict(info.state.subjects or {})
                if not any(left.values()):
                    return
                await asyncio.sleep(0.2)  # stream state has no event to await: poll it, bounded
    except TimeoutError:
        pass
    counts = {stream: sum(subjects.values()) for stream, subjects in left.items()}
    samples = []
    for stream, subjects in left.items():
        for subject in sorted(subjects)[:8]:
            stored = await target.client.conn.get_last(stream, subject)
            samples.append(f"{subject}: {stored.data[:160]!r}" if stored is not None else subject)
    pytest.fail(f"{DRAIN_BOUND} s after the garbage, still stored: {counts}:\n" + "\n".join(samples))


async def test_after_the_garbage_the_live_execution_still_completes(target: Target) -> None:
    await target.client.complete_activity(target.token, 21)
    assert await target.held.result(timeout=30) == 22


async def test_after_the_garbage_a_new_workflow_still_completes(target: Target) -> None:
    handle = await target.client.start(fuzz_normal, 5, id="after-the-garbage")
    assert await handle.result(timeout=30) == 30


async def test_after_the_garbage_the_api_still_answers(target: Target) -> None:
    reply = await ask(
        target, "complete", codec.encode(CompleteRequest(token=target.token, result=msgspec.Raw(b"1")))
    )
    refused(reply, verb="complete", body=b"", codes={"activity.closed"})
