"""A 3-node NATS JetStream cluster (R3) loses the node that leads the history stream (issue 5).

``test_history_leader_lost_mid_run`` starts ``deploy/nats-cluster``'s three configs as
``nats-server`` processes on free loopback ports and temporary stores (the rewrite is copied
from ``test_deploy.py``), two runtime processes and a client, all given the three seed URLs,
with ``--replicas 3``. Mid-run it SIGKILLs the node leading ``<NS>_HISTORY``: the stream
elects a new leader on the remaining two nodes, the runtimes and the client reconnect, and
every workflow still completes with its result, each activity result applied exactly once.

The other tests cover what a failover does to the engine: a timer that fires while the
inbox refuses publishes (its leader election) is kept, a pull answered 503 (a consumer
without a leader yet) recovers at once, a client read whose node dies is retried on another
seed, and two runtimes provisioning a fresh namespace at once on a cluster both start.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import itertools
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from perdure import Client, EmbeddedServer, Settings, Worker
from perdure.actors.history_log import HistoryLog
from perdure.runtime import codec
from perdure.runtime.embedded import find_nats_server
from perdure.runtime.errors import ExecutionNotFound, PerdureError
from perdure.runtime.events import HistoryStep, TimerFired, TimerStarted
from perdure.runtime.nats_admin import ensure_consumer, ensure_stream
from perdure.runtime.nats_client import Connection, StoredMessage, nats_core
from perdure.runtime.nats_consumer import PullConsumer
from perdure.runtime.provision import Provisioner

from nats_cluster import http_status, rewrite_cluster
from support import TESTS_DIR, RuntimeProcess, assert_applied_once, watch_history, watch_timer_markers
from workflows import busy, busy_expected, sleeper

WORKFLOWS = 100


# ------------------------------------------------- the cluster (after test_deploy.py)


async def monitoring(node: dict[str, Any], path: str) -> dict[str, Any]:
    """A node's monitoring endpoint ``path``, decoded."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", node["monitor_port"]), 1)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    body: dict[str, Any] = json.loads(response.split(b"\r\n\r\n", 1)[1])
    return body


async def connection_names(node: dict[str, Any]) -> set[str]:
    """The names of the clients connected to a node (its monitoring endpoint's /connz)."""
    body = await monitoring(node, "/connz?limit=1000")
    return {c.get("name", "") for c in body.get("connections") or []}


async def meta_leader(nodes: list[dict[str, Any]]) -> str:
    """The server name of the JetStream meta leader (a node's monitoring ``/jsz``)."""
    for node in nodes:
        with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
            leader = ((await monitoring(node, "/jsz")).get("meta_cluster") or {}).get("leader")
            if leader:
                return str(leader)
    raise AssertionError("no node names a JetStream meta leader")


async def meta_settled(nodes: list[dict[str, Any]]) -> bool:
    """The JetStream meta leader sees every other server current (healthy nodes alone are not
    enough to place R3 streams; ``provision_retried`` covers what is left)."""
    for node in nodes:
        with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
            meta = (await monitoring(node, "/jsz")).get("meta_cluster") or {}
            if meta.get("leader") == node["server_name"]:
                peers = meta.get("replicas") or []
                return len(peers) == len(nodes) - 1 and all(
                    p.get("current") and not p.get("offline") for p in peers
                )
    return False


def start_node(node: dict[str, Any], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [find_nats_server(), "-c", str(node["conf"]), "-l", str(node["log"])],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@contextlib.asynccontextmanager
async def nats_cluster(
    tmp_path: Path,
) -> AsyncIterator[tuple[list[dict[str, Any]], dict[str, subprocess.Popen]]]:
    """Three nats-server processes in one cluster, each healthy (JetStream has a meta leader)."""
    nodes = rewrite_cluster(tmp_path)
    procs: dict[str, subprocess.Popen] = {}
    try:
        for node in nodes:
            procs[node["server_name"]] = start_node(node, tmp_path)
        deadline = time.monotonic() + 20
        for node in nodes:
            while True:
                assert procs[node["server_name"]].poll() is None, f"{node['server_name']} exited"
                with contextlib.suppress(OSError, TimeoutError, IndexError, ValueError):
                    if await http_status(node["monitor_port"], "/healthz") == 200:
                        break
                assert time.monotonic() < deadline, f"{node['server_name']} never became healthy"
                await asyncio.sleep(0.1)
        while not await meta_settled(nodes):
            assert time.monotonic() < deadline, "the JetStream meta group never had every peer current"
            await asyncio.sleep(0.1)
        yield nodes, procs
    except BaseException:
        for node in nodes:
            if node["log"].exists():
                print(
                    f"--- {node['log'].name} (tail)\n" + "\n".join(node["log"].read_text().splitlines()[-30:])
                )
        raise
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


# ------------------------------------------------------------------------- checks


async def explain(client: Client, handles: list, runtimes: list[RuntimeProcess]) -> None:
    """On a failure: where the unfinished executions stand, and what the runtimes complained of."""
    for handle in handles:
        with contextlib.suppress(Exception):
            d = await handle.describe()
            if d.status != "COMPLETED":
                steps = await handle.history_steps()
                print(
                    f"{handle.id}: {d.status}, {len(steps)} steps, last by {steps[-1].runtime}: {steps[-1]}"
                )
    for runtime in runtimes:
        noisy = [ln for ln in runtime.lines if "[info" not in ln]
        print(f"--- {runtime.name}: {len(noisy)} warnings or worse\n" + "".join(noisy[-40:]))


def runtime_env(name: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {"PERDURE_NAME": name, "PYTHONPATH": path}


# ----------------------------------------------------------------- stream leaders


async def stream_leader(client: Client, stream: str) -> str:
    """The stream's leader (stream info may time out while leadership moves: ask again)."""
    js = nats_core(client.conn).jetstream(timeout=2)
    for _ in range(20):
        with contextlib.suppress(Exception):
            info = await js.stream_info(stream)
            if info.cluster is not None and info.cluster.leader:
                return str(info.cluster.leader)
        await asyncio.sleep(0.2)
    raise AssertionError(f"{stream} has no leader")


async def settled_streams(client: Client, streams: list[str], timeout: float = 15.0) -> None:
    """Every stream has a leader and two current followers (a just-created R3 stream may not)."""
    js = nats_core(client.conn).jetstream(timeout=2)
    deadline = time.monotonic() + timeout
    for stream in streams:
        while True:
            with contextlib.suppress(Exception):
                c = (await js.stream_info(stream)).cluster
                if (
                    c
                    and c.leader
                    and c.replicas
                    and len(c.replicas) == 2
                    and all(r.current for r in c.replicas)
                ):
                    break
            assert time.monotonic() < deadline, f"{stream} never settled"
            await asyncio.sleep(0.1)


async def place_leader(client: Client, stream: str, node: str) -> None:
    """Move the stream's leadership to ``node`` (a stepdown naming the preferred peer)."""
    body = json.dumps({"placement": {"preferred": node}}).encode()
    for _ in range(10):
        if await stream_leader(client, stream) == node:
            return
        with contextlib.suppress(Exception):
            await client.conn.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", body, timeout=2)
        await asyncio.sleep(0.2)
    raise AssertionError(f"could not move the leader of {stream} to {node}")


def all_streams(client: Client) -> list[str]:
    n = client.names
    return [
        n.history_stream,
        n.inbox_stream,
        n.work_stream,
        *(f"KV_{b}" for b in (n.timers_bucket, n.executions_bucket, n.leases_bucket)),
    ]


async def provision_retried(settings: Settings) -> None:
    """The namespace's streams, created before the runtimes start: a young cluster still
    refused an R3 stream now and then ("no suitable peers for placement, peer offline",
    JetStream 10005, 2 runs in 28, its meta leader seeing every peer current a moment before)."""
    conn = await Connection.connect(settings.url)
    try:
        for attempt in range(40):
            try:
                await Provisioner(conn, settings).provision()
                return
            except PerdureError as exc:
                if "10005" not in str(exc) or attempt == 39:
                    raise
            await asyncio.sleep(0.25)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def perdure_on(
    nodes: list[dict[str, Any]], names: tuple[str, ...]
) -> AsyncIterator[tuple[Client, list[RuntimeProcess]]]:
    """Runtimes (``--replicas 3``) and a client on the cluster, all given the three seed URLs."""
    namespace = "c" + uuid.uuid4().hex[:12]
    seeds = ",".join(n["url"] for n in nodes)
    runtimes = [
        RuntimeProcess(seeds, namespace, name, extra_args=("--replicas", "3"), env=runtime_env(name))
        for name in names
    ]
    client: Client | None = None
    try:
        await provision_retried(Settings(url=seeds, namespace=namespace, replicas=3))
        for runtime in runtimes:  # one after the other: see test_concurrent_provisioning_... below
            await runtime.astart(timeout=30)
        client = await Client.connect(seeds, namespace=namespace)
        # Wait for every stream to settle (a read of a just-created stream may find no responder).
        await settled_streams(client, all_streams(client))
        yield client, runtimes
    finally:
        if client is not None:
            await client.close()
        for runtime in runtimes:
            runtime.kill()


@contextlib.asynccontextmanager
async def history_steps(client: Client) -> AsyncIterator[list[tuple[float, str, HistoryStep]]]:
    """Every history step appended, with when this process saw it."""
    steps: list[tuple[float, str, HistoryStep]] = []
    sub, messages = await client.conn.subscribe(client.names.history_wildcard)

    async def pump() -> None:
        async for msg in messages:
            steps.append(
                (time.monotonic(), msg.subject.rsplit(".", 1)[1], codec.history_step.decode(msg.data))
            )

    task = asyncio.ensure_future(pump())
    try:
        yield steps
    finally:
        task.cancel()
        await sub.stop()


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


# -------------------------------------------------------------------------- tests


async def test_history_leader_lost_mid_run(tmp_path: Path) -> None:
    """Kill the node leading ``<NS>_HISTORY`` (R3) mid-run: all workflows complete, nothing lost.

    The worst case is arranged: the node also leads the inbox stream (every inbox publish,
    client starts, activity results and timer firings, is refused during the election) and a
    runtime is connected to it (its publishes in flight are lost with the connection).
    """
    began = time.monotonic()
    async with (
        nats_cluster(tmp_path) as (nodes, procs),
        perdure_on(nodes, ("cl-a", "cl-b")) as (client, runtimes),
    ):
        history, inbox = client.names.history_stream, client.names.inbox_stream
        hosting = {n["server_name"]: await connection_names(n) for n in nodes}
        leader = next(
            name for name, conns in hosting.items() if any(c.startswith("perdure-runtime") for c in conns)
        )
        await place_leader(client, history, leader)
        await place_leader(client, inbox, leader)
        leaders = {s: await stream_leader(client, s) for s in all_streams(client)}
        lost = sorted(s for s, node in leaders.items() if node == leader)
        connected = sorted(c for c in hosting[leader] if c.startswith("perdure"))
        assert leaders[history] == leader and leaders[inbox] == leader, leaders

        async with history_steps(client) as steps:
            handles = list(
                await asyncio.gather(*(client.start(busy, i, id=f"cl-{i}") for i in range(WORKFLOWS)))
            )
            # A service awaits its results all along (handle.result() watches the index entry).
            results_future = asyncio.gather(*(h.result(timeout=90) for h in handles))
            await until(
                lambda: len({e for _, e, _ in steps}) == WORKFLOWS and len(steps) >= 3 * WORKFLOWS,
                30,
                "mid-run: every execution started, about a third of the steps written",
            )
            killed_at = time.monotonic()
            procs[leader].kill()
            procs[leader].wait()
            written_before = len(steps)
            try:
                results = await results_future
            except BaseException:
                await explain(client, handles, runtimes)
                raise
            finished = time.monotonic() - killed_at
            if finished > 30:  # the slow tail (about 1 run in 10): say what the runtimes went through
                for runtime in runtimes:
                    events = collections.Counter(
                        ln.split("]", 1)[1].split()[0]
                        for ln in runtime.lines
                        if "[warning" in ln or "[error" in ln
                    )
                    print(f"\n[cluster] slow: {runtime.name} warnings {dict(events)}")
            # The failover pause: the longest silence in history appends after the kill.
            after = [killed_at, *sorted(t for t, _, _ in steps[written_before:])]
            pause, resumed = max((b - a, b) for a, b in itertools.pairwise(after))
        new_leader = await stream_leader(client, history)

        assert results == [busy_expected(i) for i in range(WORKFLOWS)]
        assert new_leader in procs and new_leader != leader, new_leader
        for handle in handles:
            assert_applied_once(await handle.history(), handle.id)
        running = await client.list_executions(status="RUNNING")
        if running:
            js = nats_core(client.conn).jetstream(timeout=5)
            bucket = client.names.executions_bucket
            for d in running[:5]:
                msg = await js.get_last_msg(f"KV_{bucket}", f"$KV.{bucket}.{d.execution_id}")
                steps_ = await client.get_handle(d.execution_id).history_steps()
                print(
                    "LEFTOVER",
                    d,
                    "\n  leader's copy:",
                    msg.data,
                    msg.seq,
                    "\n  last step:",
                    steps_[-1].decisions,
                    [s_.runtime for s_ in steps_],
                )
        assert running == []
        conflicts = sum(r.output().count("execution.conflict") for r in runtimes)
        print(
            f"\n[cluster] killed {leader}, leader of {', '.join(lost)} (R3; connected to it: "
            f"{', '.join(connected)}), with {WORKFLOWS} workflows "
            f"mid-run ({written_before} steps written): history appends paused {pause:.2f} s (up to "
            f"{resumed - killed_at:.2f} s after the kill), new leader {new_leader}; all {WORKFLOWS} "
            f"completed with the right results {finished:.1f} s after the kill, no activity result "
            f"applied twice ({conflicts} append conflicts resolved); test took {time.monotonic() - began:.1f} s"
        )


# What a failover does to the engine, shown deterministically on one server: the inbox stream
# refusing publishes for a few seconds is what its leader election looks like to a runtime, and a
# pull request answered 503 is what a consumer whose leader is not elected yet answers.


async def test_timer_fired_while_the_inbox_refuses_is_kept(settings: Settings, client: Client) -> None:
    """Timers due while the inbox refuses publishes are not lost: their firings are retried
    until the inbox takes them, so each execution absorbs its timer once, after the inbox is back."""
    async with (
        Worker([sleeper], settings=settings),
        watch_history(client) as watch,
        watch_timer_markers(client, watch) as markers,
    ):
        js = nats_core(client.conn).jetstream()
        inbox = client.names.inbox_stream
        handles = [await client.start(sleeper, 1.0, id=f"refused-{i}") for i in range(10)]
        await watch.wait_for(
            lambda w: all(any(isinstance(e, TimerStarted) for e in w.events(h.id)) for h in handles)
        )
        config = (await js.stream_info(inbox)).config
        refusing = copy.deepcopy(config)
        refusing.subjects, refusing.subject_transform = [f"{client.names.namespace}.refused.*"], None
        await js.update_stream(refusing)  # publishes to <ns>.inbox.* now get 503, as in an election
        try:
            # Every timer is due and its KV key has expired (its marker is stored): both the
            # in-memory firing and the marker have met the refusing inbox by now.
            await markers.wait_for(lambda m: all((h.id, "t.1") in m.markers for h in handles), timeout=15)
        finally:
            restoring_at = time.time()  # no firing can be absorbed before this
            await js.update_stream(config)
        await asyncio.gather(*(h.result(timeout=5) for h in handles))
        await watch.wait_for(
            lambda w: all(any(isinstance(e, TimerFired) for e in w.events(h.id)) for h in handles)
        )
    for handle in handles:
        fired = [
            (step.time, e)
            for step in watch.steps[handle.id]
            for e in step.inputs
            if isinstance(e, TimerFired)
        ]
        assert [e.timer for _, e in fired] == ["t.1"], fired
        assert fired[0][0] >= restoring_at, (fired[0][0], restoring_at)


async def test_pull_after_a_503_recovers_quickly(nats_server: EmbeddedServer, namespace: str) -> None:
    conn = await Connection.connect(nats_server.url)
    stream = namespace.upper() + "_PULL"
    try:
        await ensure_stream(conn, name=stream, subjects=[f"{namespace}.pull.>"], replicas=1, work_queue=True)
        consumer = PullConsumer(conn, stream, "late", credit=10)
        await consumer.start()  # its first pull meets no consumer: 503
        await asyncio.sleep(0.2)
        await ensure_consumer(
            conn,
            stream=stream,
            name="late",
            filter_subject=f"{namespace}.pull.>",
            ack_wait=30,
            max_ack_pending=100,
        )
        await conn.publish(f"{namespace}.pull.one", b"hello")
        try:
            batch = await asyncio.wait_for(consumer.next_batch(), 3)
        finally:
            await consumer.stop()
        assert [d.data for d in batch] == [b"hello"]
    finally:
        await conn.close()


async def test_client_read_when_its_node_dies(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path) as (nodes, procs):
        seeds = ",".join(n["url"] for n in nodes)
        settings = Settings(url=seeds, namespace="c" + uuid.uuid4().hex[:12], replicas=3)
        conn = await Connection.connect(seeds)
        client = await Client.connect(seeds, namespace=settings.namespace)
        try:
            await Provisioner(conn, settings).provision()
            await settled_streams(client, all_streams(client))
            port = client.conn.connected_url.rsplit(":", 1)[1]
            node = next(n["server_name"] for n in nodes if n["url"].endswith(f":{port}"))
            procs[node].kill()
            procs[node].wait()
            with pytest.raises(ExecutionNotFound):
                await client.describe("no-such-execution")
        finally:
            await client.close()
            await conn.close()


async def test_concurrent_provisioning_of_a_fresh_namespace(tmp_path: Path) -> None:
    """Two runtimes starting at once on a new namespace (a Deployment's pods do) both start."""
    async with nats_cluster(tmp_path) as (nodes, _):
        seeds = ",".join(n["url"] for n in nodes)
        settings = Settings(url=seeds, namespace="c" + uuid.uuid4().hex[:12], replicas=3)
        conns = [await Connection.connect(seeds) for _ in range(2)]
        try:
            await asyncio.gather(*(Provisioner(c, settings).provision() for c in conns))
        finally:
            for conn in conns:
                await conn.close()


async def read_retried(client: Client, stream: str, subject: str) -> list[Any]:
    """The subject's messages; a direct get may be refused (503) while leadership moves."""
    for _ in range(50):
        with contextlib.suppress(PerdureError):
            return await client.conn.read_subject(stream, subject)
        await asyncio.sleep(0.2)
    return await client.conn.read_subject(stream, subject)


async def test_an_append_lost_with_the_history_leader_is_sent_again(tmp_path: Path) -> None:
    """A history append in flight to the stream's leader when that node dies is never
    acknowledged. The step waited the whole publish-ack timeout (10 s), failed, and its
    messages came back a second later: the 17-20 s completions of the test above (9 runs in
    14, the history leader killed mid-run). The append is sent again (its expected last
    sequence makes that safe) and is stored as soon as the stream has a new leader.

    Made deterministic: the leader is stopped (SIGSTOP) while the append reaches it, then
    killed; our connection is to another node, which stays up."""
    async with nats_cluster(tmp_path) as (nodes, procs):
        seeds = ",".join(n["url"] for n in nodes)
        settings = Settings(url=seeds, namespace="c" + uuid.uuid4().hex[:12], replicas=3)
        client = await Client.connect(seeds, namespace=settings.namespace)
        conn: Connection | None = None
        try:
            admin = await Connection.connect(seeds)
            await Provisioner(admin, settings).provision()
            await admin.close()
            names = client.names
            await settled_streams(client, [names.history_stream])
            leader = await stream_leader(client, names.history_stream)
            conn = await Connection.connect(next(n["url"] for n in nodes if n["server_name"] != leader))
            log = HistoryLog(conn, names, "lost-append")
            await log.append(HistoryStep(time=time.time(), runtime="first"))
            os.kill(procs[leader].pid, signal.SIGSTOP)  # takes the next append, never answers
            appending = asyncio.ensure_future(log.append(HistoryStep(time=time.time(), runtime="second")))
            await conn.flush()  # the append has reached our node, which routes it to the leader
            await asyncio.sleep(0.2)  # (the route's own write: nothing to await from here)
            procs[leader].kill()
            procs[leader].wait()
            seq = await asyncio.wait_for(appending, 40)
            stored = await read_retried(client, names.history_stream, names.history("lost-append"))
            assert [codec.history_step.decode(m.data).runtime for m in stored] == ["first", "second"]
            assert stored[-1].seq == seq
        finally:
            if conn is not None:
                await conn.close()
            await client.close()


async def test_a_watch_whose_consumer_died_with_its_node_catches_up_quickly(tmp_path: Path) -> None:
    """A KV watch (``Connection.watch``: the client's index watch behind ``handle.result()``,
    the runtime's timer markers) is an R1 ordered consumer on one node. When that node dies,
    nats-py recreates it only after missing heartbeats for two whole intervals: with a 5 s
    heartbeat, results reached ``handle.result()`` 11-14 s after history had them (4 cluster
    runs in 10, all workflows done 7-11 s after the kill), and here a change took 20 s. The
    node killed holds the watch's consumer only (not the stream's leader, not the watch's
    connection, not the JetStream meta leader: re-creating the consumer then waits for a meta
    election as well, which took 10.0 s in one CI run): the first change stored after it
    died must arrive within a few seconds."""
    async with nats_cluster(tmp_path) as (nodes, procs):
        seeds = ",".join(n["url"] for n in nodes)
        settings = Settings(url=seeds, namespace="c" + uuid.uuid4().hex[:12], replicas=3)
        admin = await Connection.connect(seeds)
        client = await Client.connect(seeds, namespace=settings.namespace)
        opened: list[Connection] = [admin]
        try:
            await Provisioner(admin, settings).provision()
            bucket = settings.names.executions_bucket
            stream = f"KV_{bucket}"
            await settled_streams(client, [stream])
            seen: asyncio.Queue[StoredMessage] = asyncio.Queue()

            async def on_entry(msg: StoredMessage) -> None:
                seen.put_nowait(msg)

            meta = await meta_leader(nodes)
            # A connection to a node other than the one its consumer is on, which is not the meta leader.
            for node in nodes * 6:
                conn = await Connection.connect(node["url"])
                opened.append(conn)
                watch = await conn.watch(stream, f"$KV.{bucket}.>", on_entry, last_per_subject=False)
                host = (await watch._sub.consumer_info()).cluster.leader
                if host not in (node["server_name"], meta):
                    break
                await watch.stop()
            else:
                raise AssertionError("every watch's consumer was on its connection's node or the meta leader")
            others = [n for n in nodes if n["server_name"] != host]
            await place_leader(client, stream, others[0]["server_name"])
            writer = await Connection.connect(others[0]["url"])
            opened.append(writer)
            procs[host].kill()
            procs[host].wait()
            await writer.publish(f"$KV.{bucket}.after-the-kill", b"1")
            stored_at = time.monotonic()
            while (await asyncio.wait_for(seen.get(), 40)).subject != f"$KV.{bucket}.after-the-kill":
                pass
            delay = time.monotonic() - stored_at
            print(
                f"\n[cluster] a watch whose consumer's node died delivered the next change after {delay:.2f} s"
            )
            assert delay < 10.0, delay  # 20 s with a 5 s heartbeat; 3.8-7.8 s with 1 s
            await watch.stop()
        finally:
            await client.close()
            for c in opened:
                await c.close()
