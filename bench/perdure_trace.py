"""Per-hop timing of Perdure's hot path, for bench/profile_perdure.py --trace.

The engine is not changed: a runtime started with

    python -c "import perdure_trace; perdure_trace.install('<file>'); \
               from perdure.runtime.daemon import main; main()" worker ...

wraps a few engine methods with wall-clock stamps (time.time(), comparable across the
processes of one machine) and writes them to <file> as JSON lines when it exits. The driver
stamps its own side; `breakdown()` lines both up per execution into hops.
"""

from __future__ import annotations

import atexit
import collections
import functools
import json
import statistics
import time
from pathlib import Path
from typing import Any

STAMPS: list[tuple[str, str, float]] = []  # (execution id, event, time)


def _stamp(execution_id: str, event: str) -> None:
    STAMPS.append((execution_id, event, time.time()))


def _wrap_async(cls: Any, name: str, ident: Any, label: str) -> None:
    original = getattr(cls, name)

    @functools.wraps(original)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        eid = ident(self, *args)
        _stamp(eid, f"{label}.begin")
        try:
            return await original(self, *args, **kwargs)
        finally:
            _stamp(eid, f"{label}.end")

    setattr(cls, name, wrapper)


def install(path: str) -> None:
    from perdure.actors import activity_actor, effect_runner, execution_actor
    from perdure.runtime import codec

    ea = execution_actor.ExecutionActor
    original_deliver = ea.deliver

    def deliver(self: Any, delivery: Any) -> None:
        _stamp(self.execution_id, "inbox.delivered")
        original_deliver(self, delivery)

    ea.deliver = deliver
    _wrap_async(ea, "_step", lambda self, *a: self.execution_id, "step")
    _wrap_async(ea, "_append", lambda self, *a: self.execution_id, "append")
    _wrap_async(effect_runner.EffectRunner, "perform", lambda self, ref, *a: ref.execution_id, "effects")

    def attempt_id(self: Any, delivery: Any) -> str:
        try:
            return codec.decode(codec.activity_task, delivery.data, what="trace").execution_id
        except Exception:
            return "?"

    _wrap_async(activity_actor.ActivityActor, "_run_attempt", attempt_id, "attempt")
    _wrap_async(activity_actor.ActivityActor, "_execute", lambda self, task: task.execution_id, "execute")

    def dump() -> None:
        with Path(path).open("w") as f:
            for row in STAMPS:
                f.write(json.dumps(row) + "\n")

    atexit.register(dump)


def breakdown(runtime_file: Path, driver: dict[str, dict[str, float]]) -> list[str]:
    """Mean and median of each hop of a 1-activity workflow, in ms.

    driver: {execution id: {"start": t before client.start, "started": t after its ack,
    "result": t when handle.result() returned}}."""
    events: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for line in runtime_file.read_text().splitlines():
        eid, ev, t = json.loads(line)
        events[eid][ev].append(t)
    hops: dict[str, list[float]] = collections.defaultdict(list)
    order = [
        ("client.start publish+ack", "d.start", "d.started"),
        ("start -> inbox delivered to runtime", "d.start", "inbox.delivered#0"),
        ("step 1: decode+activate (before append)", "step.begin#0", "append.begin#0"),
        ("step 1: history append (publish+ack)", "append.begin#0", "append.end#0"),
        ("step 1: effects (4 pipelined writes)", "effects.begin#0", "effects.end#0"),
        ("step 1: after effects (acks, replies)", "effects.end#0", "step.end#0"),
        ("work item: history append done -> attempt begins", "append.end#0", "attempt.begin#0"),
        ("attempt: decode, context, before execute", "attempt.begin#0", "execute.begin#0"),
        ("attempt: execute (no-op activity)", "execute.begin#0", "execute.end#0"),
        ("attempt: result publish+ack, work ack", "execute.end#0", "attempt.end#0"),
        ("result published -> inbox delivered", "execute.end#0", "inbox.delivered#1"),
        ("step 2: decode+activate (before append)", "step.begin#1", "append.begin#1"),
        ("step 2: history append (publish+ack)", "append.begin#1", "append.end#1"),
        ("step 2: effects (index put + close record + timer cancel)", "effects.begin#1", "effects.end#1"),
        ("step 2 effects sent -> driver has the result", "effects.begin#1", "d.result"),
        ("total (driver)", "d.start", "d.result"),
    ]
    for eid, d in driver.items():
        ev = events.get(eid)
        if not ev:
            continue
        points: dict[str, float] = {f"d.{k}": v for k, v in d.items()}
        for name, ts in ev.items():
            for i, t in enumerate(sorted(ts)):
                points[f"{name}#{i}"] = t
        for label, a, b in order:
            if a in points and b in points:
                hops[label].append((points[b] - points[a]) * 1000)
    lines = ["| hop (1-activity workflow) | mean ms | median ms |", "|---|---:|---:|"]
    for label, _, _ in order:
        v = hops.get(label)
        if v:
            lines.append(f"| {label} | {statistics.fmean(v):.3f} | {statistics.median(v):.3f} |")
    return lines
