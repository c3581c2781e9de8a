"""An activity finished by an outside service, with plain NATS requests.

    python examples/async_completion.py

The workflow asks for an expense to be approved. Its activity hands the request and its
``ctx.token`` to an approval service (a message on ``demo.approvals``, standing in for an
e-mail with a link) and returns ``make_async()``: the worker's part is over, the activity
stays open. The service, written with nothing but nats-py and JSON as a service in any
language would be, heartbeats while it thinks, then answers on ``<ns>.api.complete`` (or
fails the activity on ``<ns>.api.fail``). The workflow carries on from there. Answering a
second time is harmless: the reply says the activity is already closed.

The same requests from a shell: ``nats req demo.api.complete '{"token": "pd1.…", "result": true}'``.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from datetime import timedelta

import msgspec
import nats

from perdure import (
    ActivityContext,
    ActivityError,
    Client,
    EmbeddedServer,
    RetryPolicy,
    Settings,
    Worker,
    activity,
    make_async,
    workflow,
)
from perdure.runtime.logs import configure

NAMESPACE = "demo"
T0 = time.monotonic()


def say(what: str) -> None:
    print(f"[{time.monotonic() - T0:6.3f}s] {what}", flush=True)


class Expense(msgspec.Struct):
    employee: str
    amount: float


class Mailer:
    """How the activity reaches people: here, a NATS message the service listens to."""

    nc: nats.NATS | None = None


@activity(timeout=timedelta(days=7), retry=RetryPolicy(maximum_attempts=1))  # a refusal is final
async def request_approval(expense: Expense, ctx: ActivityContext) -> bool:
    assert Mailer.nc is not None
    request = {"token": ctx.token, "employee": expense.employee, "amount": expense.amount}
    await Mailer.nc.publish("demo.approvals", json.dumps(request).encode())
    say(
        f"activity: approval of {expense.amount:.2f} for {expense.employee} requested; returning make_async()"
    )
    return make_async()


@workflow
async def expense_approval(expense: Expense) -> str:
    try:
        approved = await request_approval(expense, timeout=timedelta(hours=48))
    except ActivityError as exc:
        return f"refused {expense.amount:.2f} for {expense.employee} ({exc.type}: {exc.message})"
    return f"{'approved' if approved else 'rejected'} {expense.amount:.2f} for {expense.employee}"


async def approval_service(url: str, handled: asyncio.Queue[str], ready: asyncio.Event) -> None:
    """The outside service: nats-py and JSON only, no Perdure import needed."""
    nc = await nats.connect(url)
    sub = await nc.subscribe("demo.approvals")
    await nc.flush()
    ready.set()

    async def ask(verb: str, body: dict[str, object]) -> str:
        reply = await nc.request(f"{NAMESPACE}.api.{verb}", json.dumps(body).encode(), timeout=10)
        return reply.data.decode()

    try:
        async for message in sub.messages:
            request = json.loads(message.data)
            token, who, amount = request["token"], request["employee"], request["amount"]
            say(f"service: {who} asks for {amount:.2f} (token {token[:8]}…{token[-8:]})")
            beat = await ask("heartbeat", {"token": token, "details": {"status": "reviewing"}})
            say(f"service: heartbeat reply {beat}")
            if amount <= 500:
                answer = await ask("complete", {"token": token, "result": True})
            else:
                error = {"type": "PolicyViolation", "message": "over the 500.00 limit"}
                answer = await ask("fail", {"token": token, "error": error})
            say(f"service: answer reply {answer}")
            again = await ask("complete", {"token": token, "result": False})
            say(f"service: second answer reply {again}")
            handled.put_nowait(token)
    finally:
        await nc.close()


async def main() -> None:
    configure("WARNING")
    with tempfile.TemporaryDirectory() as store:
        server = EmbeddedServer(store_dir=store)
        say(f"embedded NATS with JetStream at {server.start()}")
        settings = Settings(url=server.url, namespace=NAMESPACE, name="approvals-runtime")
        handled: asyncio.Queue[str] = asyncio.Queue()
        ready = asyncio.Event()
        service = asyncio.ensure_future(approval_service(server.url, handled, ready))
        await ready.wait()
        Mailer.nc = await nats.connect(server.url)
        try:
            async with Worker([expense_approval, request_approval], settings=settings):
                client = await Client.connect(server.url, namespace=NAMESPACE)
                for n, expense in enumerate([Expense("alice", 120.0), Expense("bob", 900.0)]):
                    handle = await client.start(expense_approval, expense, id=f"expense-{n}")
                    result = await handle.result(timeout=30)
                    await asyncio.wait_for(handled.get(), timeout=30)  # the service is done with it
                    say(f"workflow result: {result}")
                await client.close()
        finally:
            service.cancel()
            await asyncio.gather(service, return_exceptions=True)
            await Mailer.nc.close()
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
