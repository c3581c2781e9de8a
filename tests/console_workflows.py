"""Workflows the console's browser test shows: finished, a parent and its child, one waiting
for a signal, one whose activity waits for its token, one whose activity heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import msgspec

from perdure import ActivityContext, activity, make_async, workflow

TOKENS: asyncio.Queue[str] = asyncio.Queue()
heartbeating = asyncio.Event()  # set once ``crunch`` has sent its checkpoint
release = asyncio.Event()  # lets ``crunch`` finish


class Order(msgspec.Struct, frozen=True):
    id: str
    items: list[str]
    total: float


@activity
async def label(order: Order) -> str:
    return f"{order.id}: {len(order.items)} items, {order.total:.2f} EUR"


@workflow
async def pack(order: Order) -> str:
    return await label(order)


@workflow
async def ship(order: Order) -> str:
    packed = await pack(order, id=f"{workflow.info().execution_id}-pack")
    return f"shipped ({packed})"


@workflow
async def await_approval(order: Order) -> str:
    approved = await workflow.wait_signal("approval", type=bool)
    return "approved" if approved else "rejected"


@activity(timeout=timedelta(days=2))
async def ask_manager(order: Order, ctx: ActivityContext) -> bool:
    TOKENS.put_nowait(ctx.token)
    return make_async()


@workflow
async def expense(order: Order) -> bool:
    return await ask_manager(order)


@activity(timeout=timedelta(hours=1), heartbeat=timedelta(seconds=2))
async def crunch(n: int, ctx: ActivityContext) -> int:
    """Heartbeats (throttled to one per 1.6 s) with the same checkpoint until released."""
    while not release.is_set():
        await ctx.heartbeat({"done": n // 2, "of": n})
        heartbeating.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 0.3)
    return n


@workflow
async def report(n: int) -> int:
    return await crunch(n)


ALL = [pack, ship, label, await_approval, ask_manager, expense, crunch, report]
