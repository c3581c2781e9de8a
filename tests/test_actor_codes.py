"""Issue 10 item 7, the execution actor's answers: each error code says what is wrong."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from activity_workflows import approval, approve, tokens

from perdure import ActivityClosed, Client, InvalidToken, Settings, Worker
from perdure.runtime.tokens import decode_token, encode_token


async def next_token(execution_id: str) -> str:
    return await asyncio.wait_for(tokens(execution_id).get(), timeout=10)


async def test_a_forged_run_is_an_invalid_token(settings: Settings, client: Client) -> None:
    async with Worker([approval, approve], settings=settings):
        handle = await client.start(approval, "desk", id="forged-run")
        token = decode_token(await next_token("forged-run"))
        for run in (token.run + 1, 99, 0, -1):
            forged = encode_token(msgspec.structs.replace(token, run=run))
            with pytest.raises(InvalidToken):
                await client.complete_activity(forged, True)
        await client.complete_activity(encode_token(token), True)  # still open: the forgeries changed nothing
        assert await handle.result(timeout=10) == "approved"


async def test_a_null_result_for_a_closed_activity_says_closed(settings: Settings, client: Client) -> None:
    """``approve`` returns a bool, so ``null`` would not decode; but the activity is closed,
    which is what the sender needs to hear (it is what any other result gets)."""
    async with Worker([approval, approve], settings=settings):
        handle = await client.start(approval, "desk", id="null-closed")
        token = await next_token("null-closed")
        await client.complete_activity(token, True)
        assert await handle.result(timeout=10) == "approved"
        for late in (None, True, "not a bool"):
            with pytest.raises(ActivityClosed):
                await client.complete_activity(token, late)
