"""nats-server processes configured for authentication, TLS and accounts, for the security tests.

Everything secret is made here: TLS certificates with ``trustme``, NKeys with ``nkeys``, and
operator/account/user JWTs signed with those NKeys (the format of nats-io/jwt v2, without
``nsc``), so the tests need nothing but the server binary.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
import trustme

from perdure.runtime.embedded import find_nats_server, free_port


class SecureServer:
    """A nats-server started from a config written by the test (``body`` is its auth part)."""

    def __init__(self, tmp: Path, body: str, *, name: str = "secure") -> None:
        self.dir = tmp / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = self.dir / "nats.conf"
        self.log = self.dir / "nats.log"
        self.conf.write_text(
            f"server_name: {name}\nlisten: 127.0.0.1:{self.port}\n"
            f'jetstream {{ store_dir: "{self.dir / "store"}" }}\n{body}\n'
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> SecureServer:
        self._proc = subprocess.Popen(
            [find_nats_server(), "-c", str(self.conf), "-l", str(self.log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(f"nats-server exited: {err}\n{self.conf.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(10)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


# ---------------------------------------------------------------------------- TLS


@dataclass
class Certificates:
    ca: Path  # the CA that signed the server's and the client's certificates
    other_ca: Path  # a CA that signed nothing here: trusting only it must fail
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certificates(tmp: Path, server_names: tuple[str, ...] = ("localhost", "127.0.0.1")) -> Certificates:
    tmp.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert(*server_names)
    client = ca.issue_cert("perdure-client@example.test")
    paths = Certificates(
        ca=tmp / "ca.pem",
        other_ca=tmp / "other-ca.pem",
        server_cert=tmp / "server.pem",
        server_key=tmp / "server.key",
        client_cert=tmp / "client.pem",
        client_key=tmp / "client.key",
    )
    ca.cert_pem.write_to_path(str(paths.ca))
    other.cert_pem.write_to_path(str(paths.other_ca))
    server.cert_chain_pems[0].write_to_path(str(paths.server_cert))
    server.private_key_pem.write_to_path(str(paths.server_key))
    client.cert_chain_pems[0].write_to_path(str(paths.client_cert))
    client.private_key_pem.write_to_path(str(paths.client_key))
    return paths


def tls_block(certs: Certificates, *, verify_clients: bool = False) -> str:
    verify = f'  ca_file: "{certs.ca}"\n  verify: true\n' if verify_clients else ""
    return (
        f'tls {{\n  cert_file: "{certs.server_cert}"\n  key_file: "{certs.server_key}"\n'
        f"  timeout: 2\n{verify}}}\n"
    )


# -------------------------------------------------------------------------- NKeys


@dataclass
class NKey:
    seed: bytes
    public: str

    def write_seed(self, path: Path) -> Path:
        path.write_bytes(self.seed + b"\n")
        path.chmod(0o600)
        return path


def make_nkey(prefix: int) -> NKey:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return NKey(seed, nkeys.from_seed(bytearray(seed)).public_key.decode())


def user_nkey() -> NKey:
    return make_nkey(nkeys.PREFIX_BYTE_USER)


# ---------------------------------------------------------------- JWT (operator mode)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(claims: dict[str, Any], signer: NKey) -> str:
    claims = {**claims, "iat": int(time.time())}
    body = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
    claims["jti"] = base64.b32encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(claims).encode())
    signature = nkeys.from_seed(bytearray(signer.seed)).sign(f"{header}.{payload}".encode())
    return f"{header}.{payload}.{_b64(signature)}"


@dataclass
class OperatorSetup:
    """An operator, one account with JetStream, and a user of it as a ``.creds`` file."""

    server_config: str
    creds: Path
    user_public: str


def operator_setup(tmp: Path) -> OperatorSetup:
    operator = make_nkey(nkeys.PREFIX_BYTE_OPERATOR)
    account = make_nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    system = make_nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    user = user_nkey()
    operator_jwt = _jwt(
        {
            "iss": operator.public,
            "sub": operator.public,
            "name": "perdure-test",
            "nats": {"type": "operator", "version": 2, "system_account": system.public},
        },
        operator,
    )
    unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "conn": -1, "leaf": -1}
    jetstream = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}

    def account_jwt(key: NKey, name: str, js: bool) -> str:
        limits = {**unlimited, "wildcards": True, **(jetstream if js else {})}
        claims = {"type": "account", "version": 2, "limits": limits}
        return _jwt({"iss": operator.public, "sub": key.public, "name": name, "nats": claims}, operator)

    user_claims = {"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
    user_jwt = _jwt(
        {"iss": account.public, "sub": user.public, "name": "app", "nats": user_claims},
        account,
    )
    creds = tmp / "app.creds"
    creds.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user.seed.decode()}\n"
        "------END USER NKEY SEED------\n"
    )
    creds.chmod(0o600)
    config = (
        f"operator: {operator_jwt}\n"
        f"system_account: {system.public}\n"
        "resolver: MEMORY\n"
        "resolver_preload: {\n"
        f"  {account.public}: {account_jwt(account, 'APP', True)}\n"
        f"  {system.public}: {account_jwt(system, 'SYS', False)}\n"
        "}\n"
    )
    return OperatorSetup(config, creds, user.public)
