"""Restate: the server from npm (@restatedev/restate-server) in bench/.peers/restate-server,
and the Python SDK served by hypercorn in bench/.peers/restate."""

from __future__ import annotations

import platform
import shutil

from .base import PEERS_HOME, PeerScript, Unavailable, ensure_venv, log, sh

SERVER_DIR = PEERS_HOME / "restate-server"
NPM_PACKAGE = "@restatedev/restate-server"


class Restate(PeerScript):
    name = "restate"
    script = "restate_peer.py"
    packages = ["restate-sdk", "hypercorn", "httpx"]

    def setup(self) -> None:
        ensure_venv(self.venv, self.packages)
        arch = {"x86_64": "x64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        binary = SERVER_DIR / f"node_modules/@restatedev/restate-server-linux-{arch}/bin/restate-server"
        if binary.exists():
            return
        if not shutil.which("npm"):
            raise Unavailable("npm not found: Restate's server installs from the npm registry")
        log(f"installing {NPM_PACKAGE} into {SERVER_DIR.relative_to(PEERS_HOME.parent)} ...")
        SERVER_DIR.mkdir(parents=True, exist_ok=True)
        # --ignore-scripts: the package ships its binary as an optional dependency; the only
        # install script in the tree is a usage-analytics ping we do not want.
        sh(
            ["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund", "--silent", NPM_PACKAGE],
            cwd=SERVER_DIR,
        )
        if not binary.exists():
            raise Unavailable(f"npm installed no restate-server binary for linux-{arch}")
