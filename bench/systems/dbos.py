"""DBOS Transact with a SQLite system database, in bench/.peers/dbos."""

from __future__ import annotations

from .base import PeerScript


class Dbos(PeerScript):
    name = "dbos"
    script = "dbos_peer.py"
    packages = ["dbos"]
