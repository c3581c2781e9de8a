"""The chaos soak of issue 10: many workflows, SIGKILLed runtimes and a NATS restart; prints the figures.

    .venv/bin/python bench/soak.py [--workflows 500] [--kills 5] [--runs 1] [--seed 20] [--keep DIR]

Each run is tests/chaos_harness.py's (the chaos test's) with bigger numbers: ``order``
workflows (3 activities, a durable timer, an async completion answered by a plain NATS
request from another process) on 3 ``perdure worker`` processes. It prints each run's report
(time to drain, activity runs repeated after their outcome was in history, results, stuck
executions) and exits 1 if any run broke an invariant. ``--keep`` leaves each run's store,
side-effect log and runtime logs in DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the harness and its workflows

from chaos_harness import ChaosConfig, ChaosReport, ChaosRun

from perdure.runtime.logs import configure


def broken(report: ChaosReport) -> list[str]:
    """The invariants the chaos test asserts, as a list of what failed."""
    checks = {
        "not done": len(report.not_done),
        "wrong results": len(report.wrong),
        "applied twice": len(report.applied_twice),
        "still RUNNING": len(report.still_running),
        "inbox messages left": report.inbox_left,
        "tokens refused": report.completer.get("token.invalid", 0),
        "repeated activity runs": len(report.repeats),
    }
    return [f"{what}: {n}" for what, n in checks.items() if n]


async def soak(args: argparse.Namespace) -> int:
    failures = 0
    for run in range(args.runs):
        config = ChaosConfig(
            workflows=args.workflows,
            kills=args.kills,
            seed=args.seed + run,
            start_span=args.start_span,
            deadline=args.deadline,
        )
        if args.keep:
            workdir = Path(args.keep) / f"run-{run}"
            workdir.mkdir(parents=True, exist_ok=True)
            report = await ChaosRun(config, workdir).run()
        else:
            with tempfile.TemporaryDirectory(prefix="perdure-soak-") as tmp:
                report = await ChaosRun(config, Path(tmp)).run()
        print(f"--- run {run + 1} of {args.runs}\n{report.summary()}", flush=True)
        problems = broken(report)
        if problems:
            failures += 1
            print("BROKEN: " + "; ".join(problems), flush=True)
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=500)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--start-span", type=float, default=30.0, help="seconds over which to start them")
    parser.add_argument("--deadline", type=float, default=240.0, help="seconds for every result")
    parser.add_argument("--keep", default=None, help="leave each run's files in this folder")
    configure("ERROR")  # nats-py's reconnect warnings during the restart are expected
    sys.exit(asyncio.run(soak(parser.parse_args())))


if __name__ == "__main__":
    main()
