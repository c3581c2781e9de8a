"""The client verbs' arguments, added to ``perdure``'s parser by ``runtime/daemon.py``.

Every verb takes the connection options of ``perdure worker``: ``--url``, ``--namespace``,
``--connect-timeout`` and the authentication/TLS flags of ``runtime/connect_options.py``,
each with its ``PERDURE_*`` variable (resolved by ``Settings.from_env`` in ``main``), and
``--json`` for output that scripts read.
"""

from __future__ import annotations

import argparse
from typing import Any

from perdure.runtime import connect_options

VERBS = (
    "start", "result", "describe", "list", "history", "signal", "query",
    "cancel", "terminate", "complete", "fail", "heartbeat", "watch",
)  # fmt: skip

STATUSES = ("RUNNING", "BLOCKED", "COMPLETED", "FAILED", "CANCELLED", "TERMINATED")


def _common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.set_defaults(cli_verb=parser.prog.rsplit(" ", 1)[-1])
    parser.add_argument("--json", action="store_true", help="machine-readable output (documented fields)")
    conn = parser.add_argument_group("connection (as for `perdure worker`)")
    conn.add_argument("--url", default=None, help="NATS seed URLs (PERDURE_URL; default: the local server)")
    conn.add_argument("--namespace", default=None, help="namespace (PERDURE_NAMESPACE, perdure)")
    conn.add_argument(
        "--connect-timeout", type=float, default=None, help="seconds to connect (PERDURE_CONNECT_TIMEOUT, 10)"
    )
    connect_options.add_arguments(parser)
    return parser


def _filters(parser: argparse.ArgumentParser, *, bulk: bool) -> None:
    what = "act on every open execution matching" if bulk else "only executions"
    group = parser.add_argument_group("filter" + (" (bulk: no ID, at least one filter)" if bulk else ""))
    group.add_argument("--status", choices=STATUSES, help=f"{what} with this status")
    group.add_argument("--workflow", help=f"{what} of this workflow")
    group.add_argument("--since", help=f"{what} started since: 10m, 2h, 3d or an ISO time (UTC)")
    if bulk:
        group.add_argument("--yes", action="store_true", help="do it (without: print the count only)")


def add_verbs(sub: Any) -> None:
    """Add the client verbs to ``perdure``'s subparsers (``sub``)."""

    def verb(name: str, text: str) -> argparse.ArgumentParser:
        return _common(sub.add_parser(name, help=text, description=text))

    p = verb("start", "start an execution of a workflow, by name")
    p.add_argument("workflow", help="the workflow's name")
    p.add_argument("--input", default="null", help="the input, as JSON (default null)")
    p.add_argument("--id", help="execution id (default: a new one; starting an existing id again is a no-op)")
    p.add_argument("--wait", action="store_true", help="wait for the result (exit 1 if it fails)")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds (exit 1)")

    p = verb("result", "wait for an execution's result")
    p.add_argument("id")
    p.add_argument("--timeout", type=float, help="give up after this many seconds (exit 1)")

    p = verb("describe", "an execution's status, times and error")
    p.add_argument("id")

    p = verb("list", "list executions, most recently changed first, a page at a time")
    _filters(p, bulk=False)
    p.add_argument("--prefix", default="", help="only executions whose id starts with this")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50; 0: all)")
    p.add_argument("--after", help="the next page: the cursor the previous page printed (its last revision)")

    p = verb("history", "an execution's history: every step, its time and its events")
    p.add_argument("id")
    p.add_argument("--jsonl", action="store_true", help="one stored step per line (`perdure replay --file`)")

    p = verb("signal", "send a signal: signal ID NAME, or signal NAME --status/--workflow ... [--yes]")
    p.add_argument("target", nargs="+", metavar="ID NAME", help="execution id and signal name")
    p.add_argument("--payload", default="null", help="the payload, as JSON")
    p.add_argument("--signal-id", help="dedupe id: sending it again has no effect")
    _filters(p, bulk=True)

    p = verb("query", "ask a running execution's query handler")
    p.add_argument("id")
    p.add_argument("name")
    p.add_argument("--args", default="[]", help="the handler's arguments, as a JSON list")

    for name, text in (("cancel", "cancel an execution"), ("terminate", "end an execution now")):
        p = verb(name, f"{text}: {name} ID, or {name} --status/--workflow ... [--yes]")
        p.add_argument("id", nargs="?")
        p.add_argument("--reason", default="", help="why (kept in history)")
        _filters(p, bulk=True)

    p = verb("complete", "complete an async activity by its token")
    p.add_argument("token")
    p.add_argument("--result", default="null", help="the activity's result, as JSON")

    p = verb("fail", "fail an async activity by its token")
    p.add_argument("token")
    p.add_argument("--type", default="Error", help="error type the workflow sees (default Error)")
    p.add_argument("--message", required=True, help="error message the workflow sees")

    p = verb("heartbeat", "heartbeat an async activity by its token")
    p.add_argument("token")
    p.add_argument("--details", default="null", help="checkpoint details, as JSON")

    p = verb("watch", "follow an execution's events until it closes")
    p.add_argument("id")
