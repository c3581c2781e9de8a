"""Run the whole benchmark: the JetStream floor, Perdure and every peer, in one run.

    python bench/run.py [--quick] [--only temporal,dbos] [--n N] [--reps R] [--big]
    python bench/run.py --render bench/results/<timestamp>.json   # redo .md/.png only

Run it with the project venv's interpreter (the floor needs its nats-py). Each peer is
installed on first use into a virtualenv or folder of its own under bench/.peers and
cached there. Results: bench/results/<timestamp>.json (raw, every sample),
<timestamp>.md (the table) and <timestamp>.png (latency distributions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `systems`, `report` beside us

import report
from systems import SYSTEMS, RunConfig, System, Unavailable
from systems.base import BENCH, PEERS_HOME, ensure_venv, log

RESULTS = BENCH / "results"
WORKLOADS = [
    "wf1",
    "wf10",
    "async_completion",
    "heartbeats",
    "replay",
    "throughput",
    "timers_10",
    "memory",
    "timers_large",
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="n=100, 1 repetition, 1,000 pending timers")
    p.add_argument("--only", help="comma-separated systems (the floor always runs)")
    p.add_argument("--n", type=int, help="runs per latency workload and workflows per throughput run")
    p.add_argument("--reps", type=int, help="repetitions (medians are reported)")
    p.add_argument("--pending", type=int, help="sleeping executions for the large timer and memory workloads")
    p.add_argument("--max-seconds", type=float, help="time cap for one repetition of one latency loop")
    p.add_argument("--big", action="store_true", help="also 10,000 concurrent workflows")
    p.add_argument(
        "--render", metavar="JSON", help="only rebuild the .md and .png of an earlier results .json"
    )
    return p.parse_args()


def make_config(a: argparse.Namespace) -> RunConfig:
    quick = a.quick
    n = a.n or (100 if quick else 1000)
    return RunConfig(
        n=n,
        reps=a.reps or (1 if quick else 3),
        pending=a.pending or (1000 if quick else 10_000),
        # A cap keeps slow peers (Temporal's 10-activity run is ~0.5 s) inside the budget;
        # the report says when it cut a loop short.
        max_seconds=a.max_seconds or (30.0 if quick else 60.0),
        workloads=WORKLOADS + (["throughput_10k"] if a.big else []),
        timeout_s=900.0 if quick else 1800.0,
        extra={"mode": "quick" if quick else "full"},
    )


def selected(only: str | None) -> list[System]:
    if not only:
        return SYSTEMS
    names = {s.strip() for s in only.split(",") if s.strip()}
    unknown = names - {s.name for s in SYSTEMS}
    if unknown:
        raise SystemExit(
            f"unknown systems: {', '.join(sorted(unknown))}; known: {', '.join(s.name for s in SYSTEMS)}"
        )
    return [s for s in SYSTEMS if s.name == "floor" or s.name in names]


def run_system(s: System, cfg: RunConfig) -> dict[str, Any]:
    """Install and run one system; whatever goes wrong is recorded, never raised."""
    t0 = time.monotonic()
    try:
        s.setup()
        log(f"{s.name}: running")
        doc = s.run(cfg)
    except Unavailable as e:
        doc = {"unavailable": str(e)}
    except Exception as e:
        doc = {"unavailable": f"{type(e).__name__}: {e}"}
    doc["wall_s"] = round(time.monotonic() - t0, 1)
    if "unavailable" in doc:
        log(f"{s.name}: cannot run: {doc['unavailable']}")
    elif doc.get("error"):
        log(f"{s.name}: driver error: {doc['error']}")
    else:
        log(f"{s.name}: done in {doc['wall_s']:.0f} s")
    return doc


def machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // (1024 * 1024)
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def plot(json_path: Path, png_path: Path) -> str | None:
    """The plot needs matplotlib: it runs in a bench-tools venv, never the project's."""
    try:
        python = ensure_venv(PEERS_HOME / "tools", ["matplotlib"])
        r = subprocess.run(
            [str(python), str(BENCH / "plot.py"), str(json_path), str(png_path)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        return None if r.returncode == 0 else r.stderr.strip()[-500:]
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def main() -> None:
    args = parse_args()
    if args.render:
        path = Path(args.render).resolve()
        write_outputs(json.loads(path.read_text()), path.stem)
        return
    cfg = make_config(args)
    systems = selected(args.only)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    raw: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {
            "mode": cfg.extra["mode"],
            "n": cfg.n,
            "reps": cfg.reps,
            "pending": cfg.pending,
            "max_seconds": cfg.max_seconds,
            "workloads": cfg.workloads,
        },
        "systems": {},
    }
    t0 = time.monotonic()
    # One after another, never in parallel: on 2 cores, each system gets the whole machine.
    for s in systems:
        raw["systems"][s.name] = run_system(s, cfg)
    raw["wall_s"] = round(time.monotonic() - t0, 1)
    write_outputs(raw, stamp)


def write_outputs(raw: dict[str, Any], stamp: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (RESULTS / f"{stamp}.{ext}" for ext in ("json", "md", "png"))
    json_path.write_text(json.dumps(raw, indent=1))
    md = report.markdown(raw)
    err = plot(json_path, png_path)
    md += f"\nLatency distributions: {png_path.name}\n" if err is None else f"\nNo plot: {err}\n"
    md_path.write_text(md)
    print(md)
    log(
        f"wrote {json_path.relative_to(BENCH.parent)}, {md_path.name}, {png_path.name if err is None else 'no png'}"
    )


if __name__ == "__main__":
    main()
