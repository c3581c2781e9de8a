"""Issue 12, least privilege: the permission sets shipped in ``deploy/permissions`` hold against
a real nats-server.

The server runs ``deploy/permissions/accounts.conf`` as shipped (namespace ``perdure``):
a runtime user, a service user and a completer user in one account. The completer completes
a token and is refused everything else; the service starts executions and reads results;
each refusal is a ``PermissionDenied`` naming the subject, at once, not a timeout. Two
accounts on one server keep two installations apart, even with the same namespace.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest
from activity_workflows import approval, approve, tokens

from perdure import Client, Settings, Worker
from perdure.runtime import codec
from perdure.runtime.connect_options import ConnectOptions
from perdure.runtime.errors import ConfigurationError, ExecutionNotFound, PerdureError, PermissionDenied
from perdure.runtime.messages import StartWorkflow

from secure_nats import SecureServer
from workflows import double, pipeline, pipeline_expected

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "permissions"
NAMESPACE = "perdure"  # the shipped files are written for the default namespace
FAST = 3.0  # a refusal is reported well within this (the request timeout is 10 s)
PASSWORDS = {role: f"{role}-{uuid.uuid4().hex}" for role in ("runtime", "service", "completer", "sys")}


def as_user(role: str) -> ConnectOptions:
    return ConnectOptions(user=role, password=PASSWORDS[role])


@pytest.fixture
def shipped_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SecureServer]:
    """nats-server with the shipped accounts.conf (passwords from its environment)."""
    for role, password in PASSWORDS.items():
        monkeypatch.setenv(f"PERDURE_{role.upper()}_PASSWORD", password)
    server = SecureServer(tmp_path, 'include "permissions/accounts.conf"')
    shutil.copytree(DEPLOY, server.dir / "permissions")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def runtime(shipped_server: SecureServer) -> AsyncIterator[Worker]:
    settings = Settings(
        url=shipped_server.url, namespace=NAMESPACE, name="rt-perm", connect=as_user("runtime")
    )
    async with Worker([approval, approve, pipeline, double], settings=settings) as worker:
        yield worker


async def connect(server: SecureServer, role: str) -> Client:
    return await Client.connect(server.url, namespace=NAMESPACE, options=as_user(role))


async def complete_as(url: str, options: ConnectOptions, token: str) -> None:
    client = await Client.connect(url, namespace=NAMESPACE, options=options)
    try:
        await client.complete_activity(token, True)
    finally:
        await client.close()


async def refused(call: object, *subjects: str) -> PermissionDenied:
    """``call`` (an awaitable) fails with PermissionDenied naming one of ``subjects``, fast."""
    started = time.monotonic()
    with pytest.raises(PermissionDenied) as caught:
        await asyncio.wait_for(call, 15)  # type: ignore[arg-type]
    assert time.monotonic() - started < FAST, f"took {time.monotonic() - started:.1f} s"
    assert any(subject.lower() in str(caught.value).lower() for subject in subjects), str(caught.value)
    assert caught.value.code == "nats.permission_denied"
    return caught.value


async def test_completer_completes_a_token_and_nothing_else(
    shipped_server: SecureServer, runtime: Worker
) -> None:
    service = await connect(shipped_server, "service")
    completer = await connect(shipped_server, "completer")
    try:
        handle = await service.start(approval, "invoice 7", id="perm-1")
        token = await asyncio.wait_for(tokens("perm-1").get(), 20)
        reply = await completer.heartbeat_activity(token, {"progress": 1})
        assert not reply.closed
        await completer.complete_activity(token, True)
        assert await handle.result(timeout=20) == "approved"

        # cannot read a history
        await refused(completer.get_handle("perm-1").history(), "$JS.API.DIRECT.GET.PERDURE_HISTORY")
        # cannot start a workflow (or signal, cancel: the same inbox subject)
        await refused(completer.start(approval, "forged", id="perm-2"), "perdure.inbox.perm-2")
        # (the inbox subject, or the inbox stream's info where the client reads it first)
        await refused(completer.cancel("perm-1"), "perdure.inbox.perm-1", "$JS.API.STREAM.INFO.PERDURE_INBOX")
        # cannot read the KV buckets: the executions index, the timers
        await refused(completer.describe("perm-1"), "$JS.API.DIRECT.GET.KV_PERDURE_EXECUTIONS")
        await refused(completer.list_executions(), "$JS.API.STREAM.INFO.KV_PERDURE_EXECUTIONS")
        await refused(
            completer.conn.get_last("KV_PERDURE_TIMERS", "$KV.PERDURE_TIMERS.>"),
            "$JS.API.DIRECT.GET.KV_PERDURE_TIMERS",
        )
        # cannot run an activity with an input of its choosing (publish a work item)
        await refused(completer.conn.publish("perdure.work.approve", b"{}"), "perdure.work.approve")
        # and the refusals did not break its connection: it still completes tokens
        handle = await service.start(approval, "invoice 8", id="perm-3")
        token = await asyncio.wait_for(tokens("perm-3").get(), 20)
        await completer.fail_activity(token, "no budget")
        assert "no budget" in await handle.result(timeout=20)
    finally:
        await service.close()
        await completer.close()


async def test_service_starts_and_awaits_but_cannot_touch_the_runtime_side(
    shipped_server: SecureServer, runtime: Worker
) -> None:
    service = await connect(shipped_server, "service")
    try:
        handle = await service.start(approval, "order 1", id="svc-1")
        token = await asyncio.wait_for(tokens("svc-1").get(), 20)
        watched = await asyncio.wait_for(anext(aiter(handle.watch())), 20)  # the index entry, watched
        assert watched.execution_id == "svc-1"
        described = await service.describe("svc-1")
        assert described.workflow == "approval"
        assert [d.execution_id for d in await service.list_executions()] == ["svc-1"]
        # a service does not complete tokens (that is the completer's permission)
        await refused(service.complete_activity(token, True), "perdure.api.complete")
        await refused(service.get_handle("svc-1").history(), "$JS.API.DIRECT.GET.PERDURE_HISTORY")
        step = codec.encode(StartWorkflow(workflow="approval", input=msgspec.Raw(b"null")))
        await refused(service.conn.publish("perdure.history.svc-1", step), "perdure.history.svc-1")
        await refused(service.conn.publish("perdure.work.approve", b"{}"), "perdure.work.approve")
        # the completer finishes it; the service reads the result
        completer = await connect(shipped_server, "completer")
        try:
            await completer.complete_activity(token, False)
        finally:
            await completer.close()
        assert await handle.result(timeout=20) == "rejected"
        # the runtime's own set covers the rest of the engine: timers (a durable sleep, its
        # KV entry, expiry and purge), work items, a gather of activities
        piped = await service.start(pipeline, 3, id="svc-pipeline")
        assert await piped.result(timeout=60) == pipeline_expected(3)
    finally:
        await service.close()


async def test_two_accounts_isolate_two_installations(tmp_path: Path) -> None:
    """Accounts A and B on one server, both with namespace ``perdure``: each runtime serves
    only its own account's executions, and neither account sees the other's."""
    users = "\n".join(
        f"{account}: {{ jetstream: enabled, users: ["
        f'{{user: rt_{account}, password: "{PASSWORDS["runtime"]}", permissions: $PERDURE_RUNTIME}}, '
        f'{{user: svc_{account}, password: "{PASSWORDS["service"]}", permissions: $PERDURE_SERVICE}}, '
        f'{{user: done_{account}, password: "{PASSWORDS["completer"]}", permissions: $PERDURE_COMPLETER}}] }}'
        for account in ("a", "b")
    )
    server = SecureServer(tmp_path, f'include "permissions/permissions.conf"\naccounts {{\n{users}\n}}')
    shutil.copytree(DEPLOY, server.dir / "permissions")
    server.start()
    try:

        def options(user: str) -> ConnectOptions:
            role = "runtime" if user.startswith("rt") else "service"
            return ConnectOptions(user=user, password=PASSWORDS[role])

        settings_a = Settings(url=server.url, namespace=NAMESPACE, name="rt-a", connect=options("rt_a"))
        async with Worker([approval, approve], settings=settings_a):
            client_a = await Client.connect(server.url, namespace=NAMESPACE, options=options("svc_a"))
            client_b = await Client.connect(server.url, namespace=NAMESPACE, options=options("svc_b"))
            try:
                handle = await client_a.start(approval, "in a", id="iso-1")
                token_a = await asyncio.wait_for(tokens("iso-1").get(), 20)
                # account B has no Perdure of its own yet: not even A's streams are visible there
                with pytest.raises(ConfigurationError, match="no JetStream stream"):
                    await client_b.describe("iso-1")
                settings_b = Settings(
                    url=server.url, namespace=NAMESPACE, name="rt-b", connect=options("rt_b")
                )
                async with Worker([approval, approve], settings=settings_b):
                    with pytest.raises(ExecutionNotFound):
                        await client_b.describe("iso-1")
                    assert await client_b.list_executions() == []
                    handle_b = await client_b.start(approval, "in b", id="iso-1")  # same id, other account
                    token_b = await asyncio.wait_for(tokens("iso-1").get(), 20)
                    assert token_b != token_a
                    # A's token means nothing to B's runtime (its nonce is not in B's history)
                    with pytest.raises(PerdureError):
                        await complete_as(server.url, options("rt_b"), token_a)
                    await complete_as(server.url, options("rt_a"), token_a)
                    assert await handle.result(timeout=20) == "approved"
                    assert (await client_b.describe("iso-1")).status == "RUNNING"
                    assert [d.status for d in await client_a.list_executions()] == ["COMPLETED"]
                    assert (await handle_b.describe()).status != "COMPLETED"
            finally:
                await client_a.close()
                await client_b.close()
    finally:
        server.stop()


def test_deploy_configs_use_accounts_and_tls_and_publish_no_open_port() -> None:
    """The compose set-up: clients and routes over TLS, users from ../permissions (every one
    with a permission set), monitoring never published, runtimes log in as `runtime`."""
    import re

    import yaml

    compose_dir = DEPLOY.parent / "compose"
    conf = (compose_dir / "nats.conf").read_text()
    assert re.search(r"^tls\s*\{", conf, re.MULTILINE), "clients need TLS"
    cluster = conf[conf.index("cluster {") :]
    assert "tls {" in cluster and "verify: true" in cluster, "routes need mutual TLS"
    assert 'include "../permissions/accounts.conf"' in conf
    assert re.search(r"^http:\s*127\.0\.0\.1:", conf, re.MULTILINE), "monitoring on loopback only"
    accounts = (DEPLOY / "accounts.conf").read_text()
    assert not re.search(r"^\s*no_auth_user", accounts, re.MULTILINE)
    users = re.findall(r"\{ user: (\w+),", accounts)
    assert set(users) == {"runtime", "service", "completer", "sys"}
    for role in ("runtime", "service", "completer"):
        assert re.search(rf"user: {role},.*permissions: \$PERDURE_{role.upper()}", accounts)

    services = yaml.safe_load((compose_dir / "compose.yaml").read_text())["services"]
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).split(":")[-1].split("/")[0] == "4222", (name, port)  # clients only
        env = svc.get("environment", {})
        if list(svc.get("command") or [])[:2] == ["perdure", "worker"]:
            assert env["PERDURE_USER"] == "runtime"
            assert env["PERDURE_PASSWORD_FILE"].startswith("/run/secrets/")
            assert env["PERDURE_TLS_CA"]


async def test_a_private_inbox_prefix_for_the_completer(tmp_path: Path) -> None:
    """With PERDURE_INBOX_PREFIX the completer's replies come under its own prefix, so its
    permissions need not include everyone's `_INBOX.>`; without the prefix it is refused its
    reply subscriptions when it connects, with an error saying what to set."""
    private = (
        '{ publish: { allow: ["perdure.api.complete", "perdure.api.fail", "perdure.api.heartbeat"] }, '
        'subscribe: { allow: ["_INBOX_completer.>"] } }'
    )
    users = (
        f'{{user: runtime, password: "{PASSWORDS["runtime"]}", permissions: $PERDURE_RUNTIME}}, '
        f'{{user: service, password: "{PASSWORDS["service"]}", permissions: $PERDURE_SERVICE}}, '
        f'{{user: unused, password: "{PASSWORDS["completer"]}", permissions: $PERDURE_COMPLETER}}, '
        f'{{user: completer, password: "{PASSWORDS["completer"]}", permissions: {private}}}'
    )
    server = SecureServer(
        tmp_path,
        f'include "permissions/permissions.conf"\naccounts {{ PERDURE: {{ jetstream: enabled, users: [{users}] }} }}',
    )
    shutil.copytree(DEPLOY, server.dir / "permissions")
    server.start()
    try:
        settings = Settings(url=server.url, namespace=NAMESPACE, name="rt-inbox", connect=as_user("runtime"))
        async with Worker([approval, approve], settings=settings):
            service = await connect(server, "service")
            try:
                handle = await service.start(approval, "private", id="inbox-1")
                token = await asyncio.wait_for(tokens("inbox-1").get(), 20)
                # replies under _INBOX: refused when connecting, before any request is sent
                err = await refused(connect(server, "completer"), "_inbox")
                assert "PERDURE_INBOX_PREFIX" in str(err)
                options = as_user("completer").replace(inbox_prefix="_INBOX_completer")
                completer = await Client.connect(server.url, namespace=NAMESPACE, options=options)
                try:
                    await completer.complete_activity(token, True)
                finally:
                    await completer.close()
                assert await handle.result(timeout=20) == "approved"
            finally:
                await service.close()
    finally:
        server.stop()


async def test_service_cancels_a_start_no_runtime_has_taken_yet(shipped_server: SecureServer) -> None:
    """No index entry yet: the existence check would read the inbox and the history, which a
    service may not. It cannot tell, so the cancel goes ahead (the runtime decides)."""
    from perdure.runtime.errors import WorkflowCancelled
    from perdure.runtime.nats_client import Connection
    from perdure.runtime.provision import Provisioner

    settings = Settings(
        url=shipped_server.url, namespace=NAMESPACE, name="rt-late", connect=as_user("runtime")
    )
    admin = await Connection.connect(shipped_server.url, options=as_user("runtime"))
    try:
        await Provisioner(admin, settings).provision()
    finally:
        await admin.close()
    service = await connect(shipped_server, "service")
    try:
        handle = await service.start(approval, "too late", id="late-1")
        await service.cancel("late-1")  # the start still waits in the inbox
        async with Worker([approval, approve], settings=settings):
            with pytest.raises(WorkflowCancelled):
                await handle.result(timeout=20)
    finally:
        await service.close()
