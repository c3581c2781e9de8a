"""Latency distributions as a PNG: one panel per latency workload, one CDF per system.

Runs in the bench-tools venv (bench/.peers/tools, matplotlib), never the project's:
    python bench/plot.py results/<timestamp>.json results/<timestamp>.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, LogLocator

PLAIN = FuncFormatter(lambda v, _: f"{v:g}")  # 20, 0.5: not 2x10^1 on a narrow log axis

PANELS = [
    ("wf1", "1-activity workflow: start -> result"),
    ("wf10", "10-activity workflow: start -> result"),
    ("async_completion", "async completion -> result"),
    ("timers_10", "1 s timer lateness, 10 pending"),
    ("timers_large", "1 s timer lateness, many pending"),
]
COLORS = {
    "floor": "black",
    "perdure": "tab:red",
    "temporal": "tab:blue",
    "restate": "tab:green",
    "dbos": "tab:orange",
}


def samples(doc: dict, workload: str) -> list[float]:
    res = doc.get("workloads", {}).get(workload, {})
    return sorted(x for x in res.get("samples_ms", []) if x > 0)


def panel(ax, raw: dict, workload: str, title: str) -> None:
    for name, doc in raw["systems"].items():
        s = samples(doc, "publish_ack" if name == "floor" and workload == "wf1" else workload)
        if not s:
            continue
        label = "floor: one publish+ack" if name == "floor" else name
        ys = [(i + 1) / len(s) for i in range(len(s))]
        ax.step(s, ys, where="post", label=f"{label} (n={len(s)})", color=COLORS.get(name))
    if workload == "timers_large":
        pend = next(
            (
                d["workloads"][workload].get("pending")
                for d in raw["systems"].values()
                if workload in d.get("workloads", {})
            ),
            None,
        )
        title = title.replace("many", f"{pend:,}") if pend else title
    ax.set_title(title, fontsize=10)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # labels on narrow ranges too
    ax.xaxis.set_major_formatter(PLAIN)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("ms (log scale)")
    ax.set_ylabel("fraction of runs")
    ax.grid(True, which="both", alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize=7, loc="lower right")


def main() -> None:
    raw = json.loads(Path(sys.argv[1]).read_text())
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(8, 3.2 * len(PANELS)))
    for ax, (w, title) in zip(axes, PANELS, strict=True):
        panel(ax, raw, w, title)
    fig.suptitle(f"Perdure benchmark {raw['started']} ({raw['config']['mode']})", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
