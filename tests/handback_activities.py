"""An activity for tests/test_handback.py, in a module of its own so that a runtime process
can host it without hosting any workflow (``perdure worker handback_activities``)."""

from __future__ import annotations

import asyncio
import os

import structlog

from perdure import activity

log = structlog.get_logger("tests.handback")

SLOWISH = 1.0  # seconds an attempt takes: shorter than the 2 s a stopping runtime gives it


@activity(timeout=60.0)  # far beyond the test's bound: no retry by timeout
async def slowish(x: int) -> str:
    """Says where it ran; logs as it starts, so the test knows a runtime is busy with it."""
    runtime = os.environ.get("PERDURE_NAME", "")
    log.info("handback.attempt_started", x=x, runtime=runtime)
    await asyncio.sleep(SLOWISH)
    return f"{runtime}:{x}"
