"""The console's routes: pages, the partials its script refreshes, the live stream, the actions.

Every read goes through the public client (``list_page``, ``describe``,
``history_steps``) or the KV readers of ``state.py``; every action through ``signal``,
``cancel`` and ``terminate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from starlette.applications import Starlette
from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from perdure.client import Client
from perdure.runtime.errors import ExecutionNotFound, InvalidPayload, PerdureError
from perdure.runtime.events import HistoryStep
from perdure.runtime.messages import TERMINAL_STATUSES
from perdure.runtime.naming import partition_of

from . import state, views

HERE = Path(__file__).parent
STATUSES = ["RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TERMINATED", "BLOCKED"]
PAGE_SIZE = 100  # rows on a page of the executions list; "next page" shows the following ones
NAMES_FROM_HISTORY = 100  # executions whose history is read to name their open activities


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.filters["human_time"] = views.human_time
    env.filters["relative"] = views.relative
    env.filters["duration"] = views.human_duration
    env.filters["epoch"] = views.epoch
    env.filters["error_text"] = views.error_text
    env.filters["pretty"] = state.pretty_json
    env.globals["terminal"] = TERMINAL_STATUSES
    env.globals["statuses"] = STATUSES
    return templates


class Pages:
    def __init__(self, client: Client, *, page_size: int = PAGE_SIZE) -> None:
        self.client = client
        self.page_size = page_size
        self.templates = _templates()
        self.stopping = asyncio.Event()  # set on shutdown: live streams end

    def routes(self) -> list[Route | Mount]:
        return [
            Route("/", lambda _: RedirectResponse("/executions", status_code=302)),
            Route("/executions", self.executions),
            Route("/executions/{id}", self.execution),
            Route("/executions/{id}/live", self.execution_live),
            Route("/executions/{id}/events", self.execution_events),
            Route("/executions/{id}/{action:str}", self.act, methods=["POST"]),
            Route("/activities", self.activities),
            Route("/tokens", self.tokens),
            Route("/runtimes", self.runtimes),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ]

    def render(self, request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        context.setdefault("now", time.time())
        context.setdefault("namespace", self.client.names.namespace)
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    # ------------------------------------------------------------------ executions

    async def _listed(self, request: Request) -> dict[str, Any]:
        """One page of the index, most recently changed first (client/index_pages.py)."""
        status = request.query_params.get("status") or None
        workflow = request.query_params.get("workflow", "").strip() or None
        prefix = request.query_params.get("prefix", "").strip()
        after = request.query_params.get("after", "").strip() or None
        page = await self.client.list_page(
            status=status, workflow=workflow, prefix=prefix, limit=self.page_size, after=after
        )
        filters = {"status": status or "", "workflow": workflow or "", "prefix": prefix}
        kept = {k: v for k, v in filters.items() if v}
        return {
            "executions": page.executions,
            "indexed": page.indexed,
            "after": after or "",
            "next_url": f"/executions?{urlencode({**kept, 'after': page.next})}" if page.next else "",
            "first_url": f"/executions?{urlencode(kept)}" if after else "",
            "filters": filters,
        }

    async def executions(self, request: Request) -> Response:
        try:
            listed = await self._listed(request)
        except InvalidPayload as exc:  # a hand-edited page cursor
            return self.render(request, "error.html", 400, message=str(exc))
        return self.render(request, "executions.html", page="executions", **listed)

    async def _execution(self, execution_id: str) -> dict[str, Any] | None:
        try:
            description = await self.client.describe(execution_id)
        except ExecutionNotFound:
            return None
        partition = partition_of(execution_id, await self.client.partitions())
        # History and open attempts are independent reads: one round trip, not two.
        steps, pending = await asyncio.gather(
            self._steps(execution_id),
            state.open_attempts(self.client.conn, self.client.names, execution=(execution_id, partition)),
        )
        related = views.relations(steps)
        _name_attempts(pending, {execution_id: related})
        return {"d": description, "steps": views.timeline(steps), "related": related, "pending": pending}

    async def _steps(self, execution_id: str) -> list[HistoryStep]:
        # Indexed, its history not readable yet (or purged by continue-as-new): no steps.
        with contextlib.suppress(ExecutionNotFound):
            return await self.client.get_handle(execution_id).history_steps(lenient=True)
        return []

    async def execution(self, request: Request) -> Response:
        execution_id = request.path_params["id"]
        try:
            found = await self._execution(execution_id)
        except PerdureError as exc:  # an invalid id, a server that does not answer
            return self.render(request, "error.html", 400, message=str(exc))
        if found is None:
            return self.render(request, "error.html", 404, message=f"No execution {execution_id!r}.")
        notice = request.query_params.get("notice", "")
        problem = request.query_params.get("error", "")
        return self.render(
            request, "execution.html", page="executions", notice=notice, problem=problem, **found
        )

    async def execution_live(self, request: Request) -> Response:
        found = await self._execution(request.path_params["id"])
        if found is None:
            return PlainTextResponse("not found", status_code=404)
        return self.render(request, "_execution_live.html", **found)

    async def execution_events(self, request: Request) -> Response:
        """Server-sent events: the execution's index entry now and at every change (no polling)."""
        handle = self.client.get_handle(request.path_params["id"])

        async def stream() -> AsyncIterator[str]:
            changes = handle.watch()
            stopping = asyncio.ensure_future(self.stopping.wait())
            try:
                while True:
                    change = asyncio.ensure_future(anext(changes))
                    done, _ = await asyncio.wait({change, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    if change not in done:
                        change.cancel()
                        return
                    d = change.result()
                    body = {"status": d.status, "history_length": d.history_length, "run": d.run}
                    yield f"data: {json.dumps(body)}\n\n"
            finally:
                stopping.cancel()
                if isinstance(changes, AsyncGenerator):  # ends the index watch now, not at GC
                    await changes.aclose()

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def act(self, request: Request) -> Response:
        """``cancel``, ``terminate`` or ``signal``, posted by the page's confirmation dialog."""
        execution_id = request.path_params["id"]
        action = request.path_params["action"]
        if not _same_origin(request):
            return PlainTextResponse("cross-site request refused", status_code=403)
        form = await request.form()
        back = URL(f"/executions/{quote(execution_id)}")
        try:
            if action == "cancel":
                await self.client.cancel(execution_id, str(form.get("reason", "")))
                notice = "Cancellation requested."
            elif action == "terminate":
                await self.client.terminate(
                    execution_id, str(form.get("reason", "")) or "terminated from the console"
                )
                notice = "Termination requested."
            elif action == "signal":
                name = str(form.get("name", "")).strip()
                if not name:
                    raise ValueError("a signal needs a name")
                text = str(form.get("payload", "")).strip()
                try:
                    payload = json.loads(text) if text else None
                except ValueError as exc:
                    raise ValueError(f"the payload is not JSON ({exc}); nothing was sent") from None
                await self.client.signal(execution_id, name, payload)
                notice = f"Signal {name!r} sent."
            else:
                return PlainTextResponse(f"no action {action!r}", status_code=404)
        except (PerdureError, ValueError) as exc:
            return RedirectResponse(str(back.include_query_params(error=str(exc))), status_code=303)
        return RedirectResponse(str(back.include_query_params(notice=notice)), status_code=303)

    # ------------------------------------------------------------- activities, tokens

    async def _attempts(self) -> list[state.OpenAttempt]:
        attempts = await state.open_attempts(self.client.conn, self.client.names)
        ids = sorted({a.execution_id for a in attempts})[:NAMES_FROM_HISTORY]
        histories = await asyncio.gather(*(self._relations(i) for i in ids))
        _name_attempts(attempts, dict(zip(ids, histories, strict=True)))
        return attempts

    async def _relations(self, execution_id: str) -> views.Relations:
        try:
            return views.relations(await self.client.get_handle(execution_id).history_steps(lenient=True))
        except ExecutionNotFound:
            return views.Relations()

    async def activities(self, request: Request) -> Response:
        attempts = [a for a in await self._attempts() if not a.waiting_for_token]
        return self.render(request, "activities.html", page="activities", attempts=attempts)

    async def tokens(self, request: Request) -> Response:
        attempts = [a for a in await self._attempts() if a.waiting_for_token]
        return self.render(request, "tokens.html", page="tokens", attempts=attempts)

    async def runtimes(self, request: Request) -> Response:
        partitions = await self.client.partitions()
        owned = await state.ownership(self.client.conn, self.client.names, partitions)
        return self.render(request, "runtimes.html", page="runtimes", ownership=owned)


def _name_attempts(attempts: list[state.OpenAttempt], known: dict[str, views.Relations]) -> None:
    """Name each attempt from its execution's history, and say whether it waits for its token."""
    for attempt in attempts:
        related = known.get(attempt.execution_id)
        scheduled = related.activities.get(attempt.seq) if related else None
        attempt.name = scheduled.name if scheduled else "?"
        heartbeats = scheduled is not None and scheduled.options.heartbeat is not None
        state.classify(attempt, heartbeats=heartbeats or attempt.record.heartbeat is not None)


def _same_origin(request: Request) -> bool:
    """Refuse a form posted from another site (the console acts with the client's rights)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


def create_app(client: Client, *, page_size: int = PAGE_SIZE) -> Starlette:
    pages = Pages(client, page_size=page_size)
    app = Starlette(routes=pages.routes())
    app.state.pages = pages
    return app
