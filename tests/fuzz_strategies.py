"""Hypothesis strategies for tests/test_fuzz_entrypoints.py: garbage for every external entry
point (request bodies, tokens, inbox messages, work items), each well formed enough to get past
the first check and wrong in the next."""

from __future__ import annotations

import base64

import msgspec
from hypothesis import strategies as st

from perdure.runtime import codec
from perdure.runtime.messages import (
    ActivityProgress,
    ActivityResult,
    ActivityTask,
    ChildResult,
    SignalWorkflow,
    StartWorkflow,
    TimerExpired,
)
from perdure.runtime.tokens import TokenData, decode_token, encode_token

# -------------------------------------------------------------------------- strategies

IDS = st.from_regex(r"[A-Za-z0-9_-]{1,24}", fullmatch=True)
BAD_IDS = st.sampled_from(["a.b", "x y", "", "*", ">", "a\tb", "é" * 3])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
RAW_JSON = JSON_VALUES.map(lambda v: msgspec.Raw(codec.encode(v)))
URLSAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def garbage_json() -> st.SearchStrategy[bytes]:
    """JSON that decodes, but not as a request: wrong types, missing fields, other structs."""
    wrong_types = st.fixed_dictionaries(
        {"token": st.integers() | st.none() | st.lists(st.integers(), max_size=2)},
        optional={"result": JSON_VALUES, "error": JSON_VALUES, "details": JSON_VALUES},
    )
    return st.one_of(
        JSON_VALUES.map(codec.encode),
        wrong_types.map(codec.encode),
        st.builds(dict, execution_id=st.integers(), name=st.lists(st.text())).map(codec.encode),
    )


def mutated_token(real: str) -> st.SearchStrategy[str]:
    """Tokens that are not the real one: altered, truncated, extended, random, or forged (well
    formed, naming the live execution, with other numbers or another nonce)."""
    data = decode_token(real)

    @st.composite
    def altered(draw: st.DrawFn) -> str:
        at = draw(st.integers(0, len(real) - 1))
        kind = draw(st.sampled_from(["replace", "cut", "insert"]))
        if kind == "replace":
            return real[:at] + draw(st.sampled_from(URLSAFE + "=.+/")) + real[at + 1 :]
        if kind == "cut":
            return real[:at]
        return real[:at] + draw(st.text(URLSAFE, min_size=1, max_size=4)) + real[at:]

    forged = st.builds(
        TokenData,
        execution_id=st.just(data.execution_id) | IDS,
        run=st.integers(1, 3),
        seq=st.integers(1, 3),
        attempt=st.integers(1, 3),
        nonce=st.just(data.nonce) | st.text(URLSAFE, min_size=1, max_size=16),
    ).map(encode_token)
    raw_bodies = st.binary(max_size=40).map(lambda b: "pd1." + base64.urlsafe_b64encode(b).decode())
    return st.one_of(altered(), forged, raw_bodies, st.text(max_size=40)).filter(
        lambda t: not same_token(t, data)
    )


def same_token(candidate: str, real: TokenData) -> bool:
    """Whether ``candidate`` names the real activity with the real nonce: a token stays valid
    across the attempts of its activity, so one that differs only in its attempt number is,
    by design, as good as the real one (not a wrong token)."""
    try:
        data = decode_token(candidate)
    except Exception:
        return False
    return (data.execution_id, data.run, data.seq, data.nonce) == (
        real.execution_id,
        real.run,
        real.seq,
        real.nonce,
    )


VERBS = st.tuples(
    st.sampled_from(["complete", "fail", "heartbeat", "signal", "query"]), st.integers(0, 11)
).map(lambda vp: f"query.{vp[1]}" if vp[0] == "query" else vp[0])


def inbox_messages() -> st.SearchStrategy[bytes]:
    """Garbage for an inbox: random bytes, JSON that is no message, and messages whose fields
    make no sense (unknown workflows, inputs of the wrong type, results nobody asked for)."""
    nonce = st.text(URLSAFE, max_size=16)
    small = st.integers(-2, 5)
    messages = st.one_of(
        st.builds(
            StartWorkflow,
            workflow=st.sampled_from(["fuzz_normal", "no_such_workflow"]) | st.text(max_size=10),
            input=RAW_JSON,
        ),
        st.builds(
            ActivityResult,
            run=small,
            seq=small,
            attempt=small,
            nonce=nonce,
            ok=st.booleans(),
            result=RAW_JSON,
        ),
        st.builds(TimerExpired, run=small, timer=st.text(max_size=12)),
        st.builds(ChildResult, run=small, seq=small, status=st.text(max_size=10), result=RAW_JSON),
        st.builds(ActivityProgress, run=small, seq=small, attempt=small, nonce=nonce, details=RAW_JSON),
        st.builds(SignalWorkflow, name=st.text(max_size=10), payload=RAW_JSON),
    ).map(codec.encode)
    return st.one_of(st.binary(max_size=100), garbage_json(), messages)


def work_items() -> st.SearchStrategy[bytes]:
    task = st.builds(
        ActivityTask,
        execution_id=IDS | BAD_IDS,
        workflow=st.text(max_size=10),
        run=st.integers(-1, 3),
        seq=st.integers(-1, 3),
        attempt=st.integers(-1, 3),
        name=st.just("fuzz_double") | st.text(max_size=10),
        input=RAW_JSON,
        nonce=st.text(URLSAFE, max_size=16),
        token=st.text(max_size=30),
    ).map(codec.encode)
    return st.one_of(st.binary(max_size=100), garbage_json(), task)
