"""``perdure cancel|terminate|signal`` over a filter instead of one id.

Without ``--yes`` it prints how many open executions match and what it would do, and
changes nothing; with ``--yes`` it acts on each, with a progress bar on stderr (redrawn in
place on a terminal, one final line otherwise). Closed executions never match: cancelling,
terminating or signalling them would do nothing. Exit 1 if any of them failed.
"""

from __future__ import annotations

import argparse
import sys

from perdure.client import Client, PerdureError
from perdure.runtime.messages import TERMINAL_STATUSES

from .output import print_error, print_json, print_text
from .verbs import UsageError, one_close, select


def is_bulk(args: argparse.Namespace) -> bool:
    """A verb that takes a filter, given one (and no id)."""
    if args.cli_verb not in ("cancel", "terminate", "signal"):
        return False
    filtered = bool(args.status or args.workflow or args.since)
    if args.cli_verb == "signal":
        if len(args.target) not in (1, 2):
            raise UsageError("signal takes ID NAME, or NAME with --status/--workflow/--since")
        if filtered != (len(args.target) == 1):
            raise UsageError("give either ID NAME, or NAME and a filter (--status/--workflow/--since)")
        return filtered
    if filtered == (args.id is not None):
        raise UsageError(f"give either an execution id or a filter, for {args.cli_verb}")
    return filtered


async def run(client: Client, args: argparse.Namespace) -> int:
    targets = [d.execution_id for d in await select(client, args) if d.status not in TERMINAL_STATUSES]
    what = f"signal {args.target[0]!r}" if args.cli_verb == "signal" else args.cli_verb
    if not args.yes:
        if args.json:
            print_json({"dry_run": True, "verb": args.cli_verb, "matched": len(targets), "ids": targets})
        else:
            print_text(f"would {what} {len(targets)} execution(s); add --yes to do it")
        return 0
    bar = Progress(len(targets), what)
    failed: list[str] = []
    for execution_id in targets:
        try:
            await _one(client, args, execution_id)
        except PerdureError as exc:
            failed.append(execution_id)
            print_error(f"{execution_id}: {exc.code}: {exc}")
        bar.advance()
    bar.close()
    done = len(targets) - len(failed)
    if args.json:
        print_json(
            {"dry_run": False, "verb": args.cli_verb, "matched": len(targets), "done": done, "failed": failed}
        )
    else:
        print_text(f"{what}: {done} of {len(targets)} done" + (f", {len(failed)} failed" if failed else ""))
    return 1 if failed else 0


async def _one(client: Client, args: argparse.Namespace, execution_id: str) -> None:
    if args.cli_verb == "signal":
        signal_id = f"{args.signal_id}:{execution_id}" if args.signal_id else None
        await client.signal(execution_id, args.target[0], args.payload, id=signal_id)
    else:
        await one_close(client, args.cli_verb, execution_id, args.reason)


class Progress:
    """``[########............]  12/40 cancel`` on stderr."""

    WIDTH = 30

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what, self.done = total, what, 0
        self.live = sys.stderr.isatty()
        self._draw()

    def advance(self) -> None:
        self.done += 1
        if self.live:
            self._draw()

    def close(self) -> None:
        if self.live:
            sys.stderr.write("\n")
        else:
            self._draw(final=True)

    def _draw(self, *, final: bool = False) -> None:
        if not (self.live or final):
            return
        filled = self.WIDTH * self.done // self.total if self.total else self.WIDTH
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total} {self.what}"
        sys.stderr.write(("\r" + line) if self.live else line + "\n")
        sys.stderr.flush()
