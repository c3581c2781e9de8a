"""A workflow calling an activity that no runtime hosts (``perdure worker poison_workflows``)."""

from __future__ import annotations

from perdure import activity, workflow


@activity
async def elsewhere(x: int) -> int:
    """Declared here, hosted nowhere: the runtime below registers only the workflow."""
    return x


@workflow
async def calls_elsewhere(x: int) -> int:
    return await elsewhere(x)
