"""A tiny example application for the compose set-up: `perdure worker workflows`.

Replace this folder with your own modules (build argument APP_DIR).
"""

from datetime import timedelta

from perdure import ActivityContext, activity, sleep, workflow


@activity(timeout=timedelta(seconds=30))
async def greet(name: str, ctx: ActivityContext) -> str:
    return f"hello, {name}"


@workflow
async def hello(name: str) -> str:
    await sleep(timedelta(seconds=5))  # a durable timer
    return await greet(name)
