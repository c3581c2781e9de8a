"""One client verb each: parse what the arguments say, call ``Client``, print the outcome."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime
from typing import Any

import msgspec

from perdure.client import Client, ExecutionDescription, ExecutionNotFound, WorkflowFailed, WorkflowHandle
from perdure.runtime.errors import PayloadDecryptFailed, PayloadKeyMissing
from perdure.runtime.messages import TERMINAL_STATUSES

from .output import (
    description_text,
    execution_json,
    executions_table,
    listed_json,
    print_error,
    print_json,
    print_text,
    step_json,
    step_text,
)

_JSON_ARGS = ("input", "payload", "result", "details", "args")
_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class UsageError(ValueError):
    """The command line asks for something malformed (exit status 2, like argparse's errors)."""


def check_usage(args: argparse.Namespace) -> None:
    """Decode every JSON argument and ``--since`` before connecting: a typo costs no round trip."""
    for name in _JSON_ARGS:
        text = getattr(args, name, None)
        if isinstance(text, str):
            try:
                setattr(args, name, msgspec.json.decode(text))
            except msgspec.DecodeError as exc:
                raise UsageError(f"--{name} is not JSON ({exc}): {text[:60]!r}") from None
    if getattr(args, "args", None) is not None and not isinstance(args.args, list):
        raise UsageError("--args must be a JSON list")
    if getattr(args, "since", None):
        args.since = since_epoch(args.since)
    if getattr(args, "type", None) is not None:
        remote_error(args.type, "")  # a bad --type is a usage error, found before connecting
    if getattr(args, "limit", 0) < 0:
        raise UsageError("--limit must be 0 (all) or more")
    after = getattr(args, "after", None)
    if after is not None and (not after.isdigit() or int(after) < 1):
        raise UsageError(f"--after {after!r}: give the cursor a previous page printed (a revision)")


def since_epoch(text: str, now: float | None = None) -> float:
    """``10m`` / ``2h`` / ``3d`` / ``90s`` ago, or an ISO time (UTC unless it says otherwise)."""
    match = _AGE.match(text.strip())
    if match:
        base = now if now is not None else datetime.now(UTC).timestamp()
        return base - float(match.group(1)) * _UNIT[match.group(2)]
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {text!r}: give an age (10m, 2h, 3d) or an ISO time") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def matches(d: ExecutionDescription, args: argparse.Namespace) -> bool:
    """The ``--status`` / ``--workflow`` / ``--since`` filter."""
    return (
        (not args.status or d.status == args.status)
        and (not args.workflow or d.workflow == args.workflow)
        and (not args.since or d.started_at >= args.since)
    )


async def select(client: Client, args: argparse.Namespace) -> list[ExecutionDescription]:
    """Executions matching the filter, newest first."""
    found = await client.list_executions(status=args.status or None, workflow=args.workflow or None)
    chosen = [d for d in found if matches(d, args)]
    chosen.sort(key=lambda d: (d.started_at, d.execution_id), reverse=True)
    return chosen


async def run(client: Client, args: argparse.Namespace) -> int:
    verb = args.cli_verb
    if verb == "start":
        return await start(client, args)
    if verb == "result":
        return await result(client, client.get_handle(args.id), args)
    if verb == "describe":
        described = await client.describe(args.id)
        print_json(execution_json(described)) if args.json else print_text(description_text(described))
        return 0
    if verb == "list":
        return await list_(client, args)
    if verb == "history":
        return await history(client.get_handle(args.id), args)
    if verb == "watch":
        return await watch(client, args)
    return await act(client, args)


async def start(client: Client, args: argparse.Namespace) -> int:
    handle = await client.start(args.workflow, args.input, id=args.id)
    if args.wait:
        return await result(client, handle, args)
    if args.json:
        print_json({"execution_id": handle.id, "workflow": args.workflow})
    else:
        print_text(f"started {handle.id} (workflow {args.workflow})")
    return 0


async def result(client: Client, handle: WorkflowHandle, args: argparse.Namespace) -> int:
    """The result on stdout (JSON), 0; a failed, cancelled or terminated execution: 1."""
    try:
        value = await handle.result(timeout=args.timeout)
    except WorkflowFailed as exc:
        if args.json:
            print_json({**execution_json(await handle.describe()), "result": None})
        print_error(f"{exc.code}: {exc}")
        return 1
    except (PayloadKeyMissing, PayloadDecryptFailed) as exc:  # encrypted; no key here (PERDURE_PAYLOAD_KEYS)
        value = "<encrypted>"
        print_error(f"{exc.code}: {exc}")
    if args.json:
        print_json({**execution_json(await handle.describe()), "result": value})
    else:
        print_json(value)
    return 0


async def list_(client: Client, args: argparse.Namespace) -> int:
    """One page, most recently changed first; with ``--json`` each row has its ``revision``
    (the last row's is the next page's ``--after``), in text a last line gives the cursor."""
    page = await client.list_page(
        status=args.status or None,
        workflow=args.workflow or None,
        prefix=args.prefix,
        since=args.since or None,
        limit=args.limit,
        after=args.after,
    )
    if args.json:
        print_json([listed_json(d) for d in page.executions])
        return 0
    print_text(executions_table(page.executions))
    if page.next is not None:
        print_text(f"(more: --after {page.next} shows the next page; --limit 0 shows all)")
    return 0


async def history(handle: WorkflowHandle, args: argparse.Namespace) -> int:
    steps = await handle.history_steps(lenient=True)  # without the payload key: "<encrypted>"
    if args.jsonl:  # what `perdure replay --file` reads: one HistoryStep per line
        for step in steps:
            print_text(msgspec.json.encode(step).decode())
    elif args.json:
        print_json({"execution_id": handle.id, "steps": [step_json(n, s) for n, s in enumerate(steps, 1)]})
    else:
        print_text("\n".join(step_text(n, s) for n, s in enumerate(steps, 1)))
    return 0


async def watch(client: Client, args: argparse.Namespace) -> int:
    """Each new step as it is stored, until the execution closes; its final status last.
    Exit 0 if it completed, 1 if it failed, was cancelled or terminated."""
    handle = client.get_handle(args.id)
    await handle.describe()  # ExecutionNotFound now, rather than waiting forever
    shown = 0
    async for described in handle.watch():
        try:
            steps = await handle.history_steps(lenient=True)
        except ExecutionNotFound:  # indexed, first step not stored yet
            steps = []
        for number, step in enumerate(steps[shown:], shown + 1):
            print_json(step_json(number, step)) if args.json else print_text(step_text(number, step))
        shown = max(shown, len(steps))
        if described.status in TERMINAL_STATUSES:
            if args.json:
                print_json(execution_json(described))
            else:
                print_text(f"{described.execution_id} {described.status}")
            return 0 if described.status == "COMPLETED" else 1
    return 1  # pragma: no cover - the watch ends only with the connection


async def act(client: Client, args: argparse.Namespace) -> int:
    """The verbs that change something: print what was done (``{"ok": true, ...}``)."""
    verb = args.cli_verb
    done: dict[str, Any] = {"ok": True, "verb": verb}
    if verb == "signal":
        execution_id, name = args.target
        await client.signal(execution_id, name, args.payload, id=args.signal_id)
        done |= {"execution_id": execution_id, "signal": name}
        said = f"sent signal {name!r} to {execution_id}"
    elif verb == "query":
        value = await client.get_handle(args.id).query(args.name, *args.args)
        print_json({"execution_id": args.id, "query": args.name, "result": value} if args.json else value)
        return 0
    elif verb in ("cancel", "terminate"):
        await one_close(client, verb, args.id, args.reason)
        done |= {"execution_id": args.id}
        said = f"asked {args.id} to cancel" if verb == "cancel" else f"terminated {args.id}"
    elif verb == "complete":
        await client.complete_activity(args.token, args.result)
        said = "completed the activity"
    elif verb == "fail":
        await client.fail_activity(args.token, remote_error(args.type, args.message))
        said = f"failed the activity ({args.type}: {args.message})"
    else:
        reply = await client.heartbeat_activity(args.token, args.details)
        done |= {"cancel_requested": reply.cancel_requested, "closed": reply.closed}
        said = f"heartbeat recorded (cancel requested: {_yes(reply.cancel_requested)}, closed: {_yes(reply.closed)})"
    print_json(done) if args.json else print_text(said)
    return 0


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


async def one_close(client: Client, verb: str, execution_id: str, reason: str) -> None:
    if verb == "cancel":
        await client.cancel(execution_id, reason)
    else:
        await client.describe(execution_id)  # terminate does not check: a typo must not go unnoticed
        await client.terminate(execution_id, reason)


def remote_error(type_name: str, message: str) -> BaseException:
    """An exception whose type name is ``type_name``: what ``fail_activity`` reports as the type."""
    if not type_name.isidentifier():
        raise UsageError(f"--type {type_name!r} is not an identifier")
    # fail_activity(token, error) reports type(error).__qualname__: a class made for the name
    # keeps to the client's public signature.
    error_type: type[Exception] = type(type_name, (Exception,), {"__qualname__": type_name})
    return error_type(message)
