"""The chaos test of issue 10: SIGKILLed runtimes and a NATS restart under a running workload.

200 workflows, each with 3 activities, a durable timer and an async completion answered by
a plain NATS request from a separate process; 3 runtime processes, 4 SIGKILLs (each victim
replaced by a new process) and one NATS server restart on the same port and store, fired as
the workload progresses (tests/chaos_harness.py). It must show: every workflow completes with
the right result, no outcome is applied twice in any history, nothing is stuck (RUNNING, or
left in an inbox), every token handed out is accepted, and no activity runs again after its
outcome is in history, counted from the side-effect log the activities append to.

``pytest -s tests/test_chaos.py`` prints the figures (time to drain, repeat count). The soak
(500 workflows, 5 kills) is marked slow: ``pytest -m slow tests/test_chaos.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from chaos_harness import ChaosConfig, ChaosReport, ChaosRun


def check(report: ChaosReport) -> None:
    summary = report.summary()
    print("\n" + summary)
    assert not report.not_done, summary
    assert not report.wrong, summary
    assert not report.applied_twice, summary
    assert not report.still_running and not report.inbox_left, summary
    assert report.completer.get("token.invalid", 0) == 0, summary  # a token handed out stays valid
    repeats = len(report.repeats)
    assert repeats == 0, summary


def seed(default: int) -> int:
    return int(os.environ.get("PERDURE_CHAOS_SEED", default))


@pytest.mark.timeout(170)
async def test_chaos_200_workflows_kills_and_a_nats_restart(tmp_path: Path) -> None:
    config = ChaosConfig(workflows=200, kills=4, nats_restarts=1, seed=seed(10), deadline=80.0)
    check(await ChaosRun(config, tmp_path).run())


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_soak_500_workflows_5_kills(tmp_path: Path) -> None:
    config = ChaosConfig(
        workflows=500, kills=5, nats_restarts=1, seed=seed(20), start_span=30.0, deadline=240.0
    )
    check(await ChaosRun(config, tmp_path).run())
