"""Issue 12: offloaded payloads under the shipped least-privilege permissions
(deploy/permissions): the runtime and the service may use the namespace's object store; a
completer may not, and a large result from it is refused at once, not after a timeout."""

from __future__ import annotations

import asyncio

from activity_workflows import approval, tokens
from offload_workflows import OFFLOAD, pattern, round_trip
from test_permissions import connect, refused, runtime, shipped_server

from perdure import Worker

from secure_nats import SecureServer

__all__ = ["runtime", "shipped_server"]  # fixtures, used by name
MB = 1024 * 1024


async def test_service_and_runtime_offload_completer_is_refused(
    shipped_server: SecureServer, runtime: Worker
) -> None:
    service = await connect(shipped_server, "service")
    completer = await connect(shipped_server, "completer")
    try:
        handle = await service.start(approval, "x" * (2 * MB), id="big-perm")  # offloaded by the service
        token = await asyncio.wait_for(tokens("big-perm").get(), 20)
        await refused(
            completer.complete_activity(token, "y" * MB), "$O.PERDURE_PAYLOADS", "OBJ_PERDURE_PAYLOADS"
        )
        await completer.complete_activity(token, True)  # a small result needs no object store
        assert await handle.result(timeout=20) == "approved"
    finally:
        await service.close()
        await completer.close()


async def test_a_large_result_reaches_the_service(shipped_server: SecureServer, runtime: Worker) -> None:
    from dataclasses import replace

    settings = replace(runtime.settings, name="rt-perm-2")
    service = await connect(shipped_server, "service")
    try:
        async with Worker(OFFLOAD, settings=settings):
            data = pattern(MB, "perm")
            handle = await service.start(round_trip, data, id="big-result")
            await handle.signal("go")
            result = await handle.result(timeout=60)
            assert len(result) == MB + 64
    finally:
        await service.close()
