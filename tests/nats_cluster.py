"""A 3-node NATS cluster from ``deploy/nats-cluster``, for tests: the configs rewritten onto
free loopback ports and a temporary store (used by test_deploy.py and test_cluster.py)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
from pathlib import Path
from typing import Any

CLUSTER_DIR = Path(__file__).resolve().parent.parent / "deploy" / "nats-cluster"
NODE_CONFS = ("n1.conf", "n2.conf", "n3.conf")


def conf_facts(text: str) -> dict[str, Any]:
    """The facts of a nats-server config this repository relies on (by regular expression)."""

    def one(pattern: str) -> str:
        m = re.search(pattern, text, re.MULTILINE | re.DOTALL)
        assert m, f"{pattern!r} not found"
        return m.group(1)

    cluster_block = one(r"^cluster\s*\{(.*?)^\}")  # top-level block, closing brace in column 0
    return {
        "server_name": one(r"^server_name:\s*(\S+)"),
        "client_port": int(one(r"^listen:\s*[\w.]+:(\d+)")),
        "monitor_port": int(one(r"^http:\s*[\w.]+:(\d+)")),
        "store_dir": one(r"^\s*store_dir:\s*\"?([^\"\n]+)\"?"),
        "cluster_name": re.search(r"name:\s*(\S+)", cluster_block).group(1),
        "cluster_port": int(re.search(r"listen:\s*[\w.]+:(\d+)", cluster_block).group(1)),
        "routes": re.findall(r"nats-route://([\w.-]+):(\d+)", cluster_block),
        "has_jetstream": re.search(r"^jetstream\s*\{", text, re.MULTILINE) is not None,
    }


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on loopback, below the kernel's ephemeral range.

    Ports handed out by ``bind(0)`` come from the ephemeral range, where the servers'
    own outgoing route connections could take one of them before the node meant to
    listen on it starts; ports below that range are never used for outgoing connections.
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = list(range(max(1024, low - 12000), low))
    random.shuffle(candidates)
    ports: list[int] = []
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise AssertionError(f"fewer than {n} free ports below {low}")


def rewrite_cluster(tmp_path: Path) -> list[dict[str, Any]]:
    """Copy the cluster configs onto free ports and a temporary store; return each node's facts."""
    originals = {c: (CLUSTER_DIR / c).read_text() for c in NODE_CONFS}
    facts = {c: conf_facts(t) for c, t in originals.items()}
    old_ports = [f[k] for f in facts.values() for k in ("client_port", "cluster_port", "monitor_port")]
    mapping = dict(zip(old_ports, free_ports(len(old_ports)), strict=True))
    pattern = re.compile(r"(?<!\d)(" + "|".join(str(p) for p in old_ports) + r")(?!\d)")
    nodes = []
    for conf, text in originals.items():
        store = tmp_path / "store" / conf.removesuffix(".conf")
        text = pattern.sub(lambda m: str(mapping[int(m.group(1))]), text)
        text = re.sub(r"(store_dir:\s*)\"?[^\"\n]+\"?", lambda m, s=store: f'{m.group(1)}"{s}"', text)
        path = tmp_path / conf
        path.write_text(text)
        node = conf_facts(text)
        node["conf"] = path
        node["log"] = tmp_path / f"{conf}.log"
        node["url"] = f"nats://127.0.0.1:{node['client_port']}"
        nodes.append(node)
    return nodes


async def http_status(port: int, path: str) -> int:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 2)
        return int(status_line.split()[1])
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
