"""The NATS boundary: only runtime/nats_*.py touch nats-py; everything else uses ``Connection``."""

from __future__ import annotations

import ast
from pathlib import Path

import perdure.runtime.nats_client as nats_client

ROOT = Path(__file__).resolve().parent.parent
BOUNDARY = {
    "runtime/nats_client.py",
    "runtime/nats_admin.py",
    "runtime/nats_consumer.py",
    "runtime/nats_connect.py",
    "runtime/nats_objects.py",  # the object store of offloaded payloads (issue 12)
}


def _uses_nats(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "nats"]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] == "nats":
                found.append(node.module)
            found += [f"{node.module}.nats_core" for a in node.names if a.name == "nats_core"]
    return found


def test_only_the_boundary_modules_touch_nats_py() -> None:
    outside = {}
    for package in ("actors", "client", "runtime"):
        for path in (ROOT / package).rglob("*.py"):
            relative = str(path.relative_to(ROOT))
            if relative not in BOUNDARY and (uses := _uses_nats(path)):
                outside[relative] = uses
    assert outside == {}, f"use Connection's methods instead: {outside}"


def test_connection_hands_out_no_nats_client() -> None:
    assert not hasattr(nats_client.Connection, "raw")
