"""Workflows and activities of the payload offloading and encryption tests (issue 12)."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from activity_workflows import tokens

from perdure import ActivityContext, RetryPolicy, activity, make_async, workflow

MARKER = "perdure-secret-marker-7f3a"


def pattern(size: int, seed: str) -> str:
    """``size`` characters that do not repeat in short cycles (sha256 hex blocks)."""
    block = "".join(hashlib.sha256(f"{seed}{i}".encode()).hexdigest() for i in range(64))
    return (block * (size // len(block) + 1))[:size]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@activity
async def big_blob(size: int) -> str:
    return pattern(size, "activity")


@workflow
async def round_trip(data: str) -> str:
    """Takes a large input, asks an activity for a large result, waits for ``go``, then
    returns the activity's result with a digest of its input appended."""
    blob = await big_blob(len(data))
    await workflow.wait_signal("go")
    return blob + digest(data)


@workflow
async def continue_once(data: str) -> int:
    """A large input; the first run continues as new with a small one once told to (its
    history is purged then)."""
    if len(data) > 100:
        await big_blob(len(data))
        await workflow.wait_signal("next")
        workflow.continue_as_new("small")
    return len(data)


@activity
async def echo(text: str) -> str:
    return text + "!"


@workflow
async def secret(text: str) -> str:
    """Passes a marked input through an activity and a signal."""
    first = await echo(text)
    extra = await workflow.wait_signal("more", type=str)
    return first + extra


@activity(timeout=timedelta(minutes=5), retry=RetryPolicy(maximum_attempts=2, initial_interval=0.1))
async def resumable(n: int, ctx: ActivityContext) -> str:
    """First attempt: hands its token out (finished by a client's heartbeat with a large
    checkpoint, then a fail); second: returns the checkpoint it resumes from, and its token
    is completed by the client with a large result."""
    tokens(ctx.execution_id).put_nowait(ctx.token)
    if ctx.checkpoint is not None:
        tokens(ctx.execution_id).put_nowait(f"checkpoint:{digest(ctx.checkpoint)}")
    return make_async()


@workflow
async def external_result(n: int) -> str:
    return await resumable(n)


@workflow
async def reversed_text(text: str) -> str:
    return text[::-1]


@workflow
async def parent_of_big_child(text: str) -> str:
    """A child with a large input and a large result (inbox messages between executions)."""
    return await reversed_text(text)


OFFLOAD = [
    big_blob,
    round_trip,
    continue_once,
    resumable,
    external_result,
    reversed_text,
    parent_of_big_child,
]
SECRET = [echo, secret]
