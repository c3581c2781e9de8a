"""Perdure in one file: an embedded NATS server, a runtime, and a client running a workflow.

    python examples/quickstart.py

The workflow charges a card, asks three carriers for a quote at once (``asyncio.gather``),
waits on a durable timer, and books the cheapest. Every decision is recorded in the
execution's history, printed at the end.
"""

from __future__ import annotations

import asyncio
import tempfile
import time

import msgspec

from perdure import Client, EmbeddedServer, Settings, Worker, activity, sleep, workflow
from perdure.runtime.logs import configure

T0 = time.monotonic()


def say(what: str) -> None:
    print(f"[{time.monotonic() - T0:6.3f}s] {what}", flush=True)


class Order(msgspec.Struct):
    id: str
    amount: float
    destination: str


class Quote(msgspec.Struct):
    carrier: str
    price: float


@activity
async def charge(order: Order) -> str:
    say(f"activity charge: charging {order.amount:.2f} for order {order.id}")
    return f"receipt-{order.id}"


@activity
async def quote(carrier: str) -> Quote:
    price = {"rail": 12.5, "road": 9.75, "air": 31.0}[carrier]
    say(f"activity quote: {carrier} quotes {price:.2f}")
    return Quote(carrier=carrier, price=price)


@activity
async def book(q: Quote) -> str:
    say(f"activity book: booked with {q.carrier}")
    return f"{q.carrier}-booking"


@workflow
async def ship_order(order: Order) -> str:
    receipt = await charge(order)
    quotes = await asyncio.gather(*[quote(c) for c in ("rail", "road", "air")])
    cheapest = min(quotes, key=lambda q: q.price)
    await sleep(1.0)  # a durable timer: it survives crashes and restarts
    booking = await book(cheapest)
    return f"{receipt}, {booking}"


async def main() -> None:
    configure("WARNING")
    with tempfile.TemporaryDirectory() as store:
        server = EmbeddedServer(store_dir=store)
        say(f"embedded NATS with JetStream at {server.start()}")
        settings = Settings(url=server.url, namespace="quickstart", name="quickstart-runtime")
        try:
            async with Worker([ship_order, charge, quote, book], settings=settings):
                say("runtime started: hosting ship_order and its activities")
                client = await Client.connect(server.url, namespace="quickstart")
                handle = await client.start(
                    ship_order, Order(id="A-42", amount=99.9, destination="Lyon"), id="order-A-42"
                )
                say(f"client started execution {handle.id}")
                result = await handle.result(timeout=30)
                say(f"workflow completed: {result}")
                say("history:")
                for event in await handle.history():
                    fields = msgspec.structs.asdict(event)
                    shown = {k: fields[k] for k in ("seq", "name", "timer", "outcome") if k in fields}
                    print(f"    {type(event).__name__:<20} {shown or ''}")
                await client.close()
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
