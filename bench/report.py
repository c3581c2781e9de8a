"""Medians over repetitions and the markdown report. Standard library only.

Ratios: every cell of a measured system shows its value and, in brackets, how many times
worse it is than the best peer on that row (1.0x = the best peer; below 1.0x = better than
every peer, which is what Perdure must show, ideally at 0.33x or less).
"""

from __future__ import annotations

import statistics
from typing import Any

PEER_NAMES = ("temporal", "restate", "dbos")

# Persisted JetStream writes a minimal design needs per workflow, on the critical path:
# 1-activity: start -> inbox, history append (started + scheduled), work publish, result ->
# inbox, history append (completed), executions KV put = 6. Each further activity adds a
# history append, a work publish and a result publish = 3, so 10 activities = 33.
# Async completion: completion -> inbox, history append, KV put = 3. A heartbeat: one KV put.
# Change these if Perdure's event model differs; the floor column follows.
# Perdure (checked against stream sequences, bench/README.md "Perdure"): with eager attempts
# its critical path is shorter than this (start, append, append, index put: no work publish, no
# result publish); in all it stores 7 messages per 1-activity workflow (+3 per further
# activity), and a heartbeat is a direct get + a KV put. The floors below stay the minimal
# work-stream design's.
WRITES = {"wf1": 6, "wf10": 33, "async_completion": 3, "heartbeat": 1}


def median_reps(result: dict[str, Any]) -> dict[str, Any]:
    """Median of every numeric field over the repetitions."""
    reps = result.get("reps") or []
    keys = {k for r in reps for k, v in r.items() if isinstance(v, int | float)}
    return {k: statistics.median(r[k] for r in reps if k in r) for k in sorted(keys)}


def aggregate(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{system: {workload: medians | {"na": why} | {"error": why}}}"""
    out: dict[str, dict[str, Any]] = {}
    for name, doc in raw["systems"].items():
        if "unavailable" in doc or ("error" in doc and "workloads" not in doc):
            out[name] = {"_unavailable": doc.get("unavailable") or doc.get("error")}
            continue
        out[name] = {}
        for w, res in doc.get("workloads", {}).items():
            if "na" in res or "error" in res:
                out[name][w] = res
            else:
                out[name][w] = {**median_reps(res), **{k: v for k, v in res.items() if k == "pending"}}
    return out


# (label, workload, field, higher_is_better, decimals)
ROWS = [
    ("1-activity workflow, p50 (ms)", "wf1", "p50_ms", False, 1),
    ("1-activity workflow, p99 (ms)", "wf1", "p99_ms", False, 1),
    ("10-activity workflow, p50 (ms)", "wf10", "p50_ms", False, 1),
    ("10-activity workflow, p99 (ms)", "wf10", "p99_ms", False, 1),
    ("throughput, {n} concurrent (wf/s)", "throughput", "wf_per_s", True, 1),
    ("throughput, 10,000 concurrent (wf/s)", "throughput_10k", "wf_per_s", True, 1),
    ("timer lateness, 10 pending, p50 (ms)", "timers_10", "p50_ms", False, 1),
    ("timer lateness, 10 pending, p99 (ms)", "timers_10", "p99_ms", False, 1),
    ("timer lateness, {pending} pending, p50 (ms)", "timers_large", "p50_ms", False, 1),
    ("timer lateness, {pending} pending, p99 (ms)", "timers_large", "p99_ms", False, 1),
    ("async completion -> result, p50 (ms)", "async_completion", "p50_ms", False, 1),
    ("async completion -> result, p99 (ms)", "async_completion", "p99_ms", False, 1),
    ("heartbeats absorbed (/s)", "heartbeats", "per_s", True, 0),
    ("cold replay, ~1,000 events (ms)", "replay", "ms", False, 1),
    ("RSS per sleeping execution (KiB)", "memory", "kb_per_exec", False, 1),
]


def floor_estimate(floor: dict[str, Any], workload: str, fld: str) -> float | None:
    """'Events persisted x floor' for the rows where that product means something."""
    pub, asy = floor.get("publish_ack", {}), floor.get("async_publish", {})
    rate = asy.get("msg_per_s")
    if workload in ("wf1", "wf10", "async_completion") and fld in pub:
        return WRITES[workload] * pub[fld]
    if workload in ("throughput", "throughput_10k") and rate:
        return rate / WRITES["wf1"]
    if workload == "heartbeats" and rate:
        return rate / WRITES["heartbeat"]
    if workload == "replay":
        return floor.get("read_1000", {}).get("ms")
    return None


def _cell_value(agg: dict[str, Any], system: str, workload: str, fld: str) -> float | str:
    sysres = agg.get(system, {})
    if "_unavailable" in sysres:
        return "-"
    res = sysres.get(workload)
    if res is None:
        return "-"
    if "na" in res:
        return "n/a"
    if "error" in res:
        return "error"
    return res.get(fld, "-")


def _fmt(v: float, decimals: int) -> str:
    return f"{v:,.{decimals}f}" if v >= 0.1 or decimals == 0 else f"{v:.3f}"


def _cell(v: float | str, best: float | None, higher: bool, dec: int) -> str:
    if not isinstance(v, float | int):
        return str(v)
    if v <= 0 and not higher:
        return f"~0 ({v:.2f})"  # e.g. RSS that did not grow: within noise, no ratio
    if best is None or best <= 0:
        return _fmt(v, dec)  # a ratio to zero means nothing
    ratio = best / v if higher else v / best
    return f"{_fmt(v, dec)} ({ratio:.2f}x)"


def table(agg: dict[str, Any], systems: list[str], cfg: dict[str, Any]) -> list[str]:
    shown = [s for s in systems if s != "floor"]
    head = ["workload", "floor (events x floor)", *shown, "best peer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    floor = agg.get("floor", {})
    for label, w, fld, higher, dec in ROWS:
        vals = {s: _cell_value(agg, s, w, fld) for s in shown}
        if all(not isinstance(v, float | int) for v in vals.values()):
            continue
        peers = {s: v for s, v in vals.items() if s in PEER_NAMES and isinstance(v, float | int)}
        best = (max if higher else min)(peers.values()) if peers else None
        best_name = next((s for s, v in peers.items() if v == best), "-")
        cells = [label.format(n=f"{cfg['n']:,}", pending=f"{cfg['pending']:,}")]
        est = floor_estimate(floor, w, fld)
        cells.append(_fmt(est, dec) if est is not None else "-")
        cells += [_cell(vals[s], best, higher, dec) for s in shown]
        cells.append(best_name)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def floor_lines(agg: dict[str, Any]) -> list[str]:
    f = agg.get("floor", {})
    if "_unavailable" in f or not f:
        return [f"JetStream floor: not measured ({f.get('_unavailable', 'not run')})."]
    pub, dg = f.get("publish_ack", {}), f.get("direct_get", {})
    return [
        "| floor measure | value |",
        "|---|---|",
        f"| publish + ack, sequential, p50 / p99 (ms) | {pub.get('p50_ms', 0):.3f} / {pub.get('p99_ms', 0):.3f} |",
        f"| async publish (msg/s) | {f.get('async_publish', {}).get('msg_per_s', 0):,.0f} |",
        f"| direct get, last by subject, p50 / p99 (ms) | {dg.get('p50_ms', 0):.3f} / {dg.get('p99_ms', 0):.3f} |",
        f"| batch direct get of 1,000 messages (ms) | {f.get('read_1000', {}).get('ms', 0):.1f} |",
    ]


def notes(raw: dict[str, Any], agg: dict[str, Any]) -> list[str]:
    out = []
    for name, res in agg.items():
        if "_unavailable" in res:
            out.append(f"- **{name}** did not run: {res['_unavailable']}")
            continue
        for w, r in res.items():
            if "na" in r:
                out.append(f"- {name} / {w}: n/a, {r['na']}")
            elif "error" in r:
                out.append(f"- {name} / {w}: error, {r['error']}")
    for name, doc in raw["systems"].items():
        for w, res in doc.get("workloads", {}).items():
            ns = [r.get("n") for r in res.get("reps", []) if "p50_ms" in r]
            if w in ("wf1", "wf10", "async_completion") and ns and min(ns) < raw["config"]["n"]:
                out.append(
                    f"- {name} / {w}: time cap reached, {min(ns)} runs per repetition instead of {raw['config']['n']}"
                )
            if w == "memory" and res.get("reps") and "servers_kb_per_exec" in res["reps"][0]:
                r0 = res["reps"][0]
                out.append(
                    f"- {name} / memory: {r0['executions']:,} sleeping executions; KiB each: servers "
                    f"{r0['servers_kb_per_exec']}, Python process {r0['process_kb_per_exec']} "
                    f"(RSS after: servers {r0['servers_after_kb'] // 1024} MiB, process {r0['process_after_kb'] // 1024} MiB)"
                )
            if w == "replay" and res.get("reps"):
                r0 = res["reps"][0]
                extra = ", ".join(f"{k}={v}" for k, v in r0.items() if k not in ("ms",))
                out.append(f"- {name} / replay: {extra}")
    return out


def versions(raw: dict[str, Any]) -> list[str]:
    out = []
    for name, doc in raw["systems"].items():
        v = doc.get("versions")
        if v:
            out.append(f"- {name}: " + ", ".join(f"{k} {val}" for k, val in v.items()))
        if doc.get("config"):
            out.append("  - setup: " + ", ".join(f"{k}: {val}" for k, val in doc["config"].items()))
    return out


def markdown(raw: dict[str, Any]) -> str:
    agg = aggregate(raw)
    cfg = raw["config"]
    systems = list(raw["systems"])
    parts = [
        f"# Perdure benchmark, {raw['started']}",
        "",
        f"Machine: {raw['machine']}. Mode: {cfg['mode']} (n={cfg['n']}, repetitions={cfg['reps']}, "
        f"pending timers={cfg['pending']:,}); medians over repetitions. Total {raw['wall_s']:.0f} s.",
        "",
        "Each cell: value (times worse than the best peer on that row; 1.00x = best peer, below 1 = better).",
        "The floor column is JetStream's own cost for the writes a workflow must persist (see bench/README.md).",
        "",
        *table(agg, systems, cfg),
        "",
        "## JetStream floor",
        "",
        *floor_lines(agg),
        "",
        "## Notes",
        "",
        *(notes(raw, agg) or ["- none"]),
        "",
        "## Versions",
        "",
        *versions(raw),
        "",
    ]
    return "\n".join(parts)
