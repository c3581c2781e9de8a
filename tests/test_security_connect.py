"""Issue 12, connections: every way a NATS deployment authenticates clients and secures the
connection works for a runtime and a client, and a wrong credential or an untrusted
certificate fails at once with a clear error that shows no secret.

Each test starts its own nats-server from a config it writes: users with passwords, a
token, NKey users, an operator with a JWT account (credentials file), TLS with certificates
made by ``trustme`` (server verification, server name, mutual TLS).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from activity_workflows import approval, approve, tokens

from perdure import Client, Settings, Worker
from perdure.runtime.connect_options import ConnectOptions
from perdure.runtime.errors import ConfigurationError, NotAuthenticated, TLSRefused

from secure_nats import Certificates, SecureServer, make_certificates, operator_setup, tls_block, user_nkey
from support import TESTS_DIR, RuntimeProcess

PASSWORD = "s3cret-" + uuid.uuid4().hex  # must never show in a log line or an error
TOKEN = "t0ken-" + uuid.uuid4().hex
FAST = 3.0  # seconds: a refused login or certificate is reported well within this


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[list[SecureServer]]:
    servers: list[SecureServer] = []
    yield servers
    for server in servers:
        server.stop()


def start(servers: list[SecureServer], tmp: Path, body: str, name: str = "secure") -> SecureServer:
    server = SecureServer(tmp, body, name=name).start()
    servers.append(server)
    return server


async def round_trip(url: str, options: ConnectOptions) -> None:
    """A runtime and a client with ``options``: start an execution, complete its async
    activity by token, await the result."""
    namespace = "s" + uuid.uuid4().hex[:10]
    settings = Settings(url=url, namespace=namespace, name=f"rt-{namespace}", connect=options)
    async with Worker([approval, approve], settings=settings):
        client = await Client.connect(url, namespace=namespace, options=options)
        try:
            handle = await client.start(approval, "pay 10", id="sec-1")
            token = await asyncio.wait_for(tokens("sec-1").get(), 20)
            await client.complete_activity(token, True)
            assert await handle.result(timeout=20) == "approved"
        finally:
            await client.close()


async def refused_fast(url: str, options: ConnectOptions, expected: type[Exception]) -> Exception:
    started = time.monotonic()
    with pytest.raises(expected) as caught:
        await asyncio.wait_for(Client.connect(url, options=options), 10)
    elapsed = time.monotonic() - started
    assert elapsed < FAST, f"took {elapsed:.1f} s to fail"
    message = str(caught.value)
    assert PASSWORD not in message and TOKEN not in message
    return caught.value


# --------------------------------------------------------------------- user/password


async def test_user_and_password(tmp_path: Path, server_factory: list[SecureServer]) -> None:
    server = start(
        server_factory, tmp_path, f'authorization {{ users = [ {{user: alice, password: "{PASSWORD}"}} ] }}'
    )
    await round_trip(server.url, ConnectOptions(user="alice", password=PASSWORD))


async def test_wrong_password_fails_fast_without_showing_it(
    tmp_path: Path, server_factory: list[SecureServer]
) -> None:
    server = start(
        server_factory, tmp_path, f'authorization {{ users = [ {{user: alice, password: "{PASSWORD}"}} ] }}'
    )
    err = await refused_fast(server.url, ConnectOptions(user="alice", password="wrong"), NotAuthenticated)
    assert "refused the login" in str(err) and "alice" in str(err)
    assert err.code == "nats.auth_refused"
    # and with the credentials in the URL (the password is not shown either)
    url = server.url.replace("nats://", f"nats://alice:{PASSWORD}x@")
    await refused_fast(url, ConnectOptions(), NotAuthenticated)


async def test_no_credentials_fail_fast(tmp_path: Path, server_factory: list[SecureServer]) -> None:
    server = start(
        server_factory, tmp_path, f'authorization {{ users = [ {{user: alice, password: "{PASSWORD}"}} ] }}'
    )
    await refused_fast(server.url, ConnectOptions(), NotAuthenticated)


# ----------------------------------------------------------------------------- token


async def test_token(tmp_path: Path, server_factory: list[SecureServer]) -> None:
    server = start(server_factory, tmp_path, f'authorization {{ token: "{TOKEN}" }}')
    await round_trip(server.url, ConnectOptions(token=TOKEN))
    await refused_fast(server.url, ConnectOptions(token=TOKEN + "x"), NotAuthenticated)


# ----------------------------------------------------------------------------- NKeys


async def test_nkey_seed_file(tmp_path: Path, server_factory: list[SecureServer]) -> None:
    known, stranger = user_nkey(), user_nkey()
    server = start(server_factory, tmp_path, f"authorization {{ users = [ {{nkey: {known.public}}} ] }}")
    seed = known.write_seed(tmp_path / "user.nk")
    await round_trip(server.url, ConnectOptions(nkey_seed_file=str(seed)))
    other = stranger.write_seed(tmp_path / "stranger.nk")
    await refused_fast(server.url, ConnectOptions(nkey_seed_file=str(other)), NotAuthenticated)


# ---------------------------------------------------------- credentials file (JWT)


async def test_credentials_file(tmp_path: Path, server_factory: list[SecureServer]) -> None:
    """Operator mode: an account JWT preloaded in the server, a user JWT + seed in a .creds file."""
    setup = operator_setup(tmp_path)
    server = start(server_factory, tmp_path, setup.server_config)
    await round_trip(server.url, ConnectOptions(creds_file=str(setup.creds)))
    # A user the account never signed: refused.
    forged = tmp_path / "forged.creds"
    stranger = user_nkey()
    text = setup.creds.read_text()
    forged.write_text(
        text.split("-----BEGIN USER NKEY SEED-----")[0]
        + (f"-----BEGIN USER NKEY SEED-----\n{stranger.seed.decode()}\n------END USER NKEY SEED------\n")
    )
    await refused_fast(server.url, ConnectOptions(creds_file=str(forged)), NotAuthenticated)


# ------------------------------------------------------------------------------- TLS


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "certs", server_names=("nats.perdure.test",))


async def test_tls_with_a_ca_file_and_server_name(
    tmp_path: Path, server_factory: list[SecureServer], certs: Certificates
) -> None:
    """The certificate names nats.perdure.test, the URL says 127.0.0.1: the server name is
    checked against the certificate, and the CA file replaces the system's CAs."""
    server = start(server_factory, tmp_path, tls_block(certs))
    options = ConnectOptions(tls_ca=str(certs.ca), tls_server_name="nats.perdure.test")
    await round_trip(server.url, options)
    # the system CAs do not know the test CA: refused, fast, saying what to do
    err = await refused_fast(server.url, ConnectOptions(), TLSRefused)
    assert "not trusted" in str(err) and "PERDURE_TLS_CA" in str(err)
    # a CA that signed nothing here
    await refused_fast(server.url, ConnectOptions(tls_ca=str(certs.other_ca)), TLSRefused)
    # the right CA but a name the certificate does not carry
    err = await refused_fast(server.url, ConnectOptions(tls_ca=str(certs.ca)), TLSRefused)
    assert "127.0.0.1" in str(err)


async def test_tls_options_refuse_a_server_without_tls(
    tmp_path: Path, server_factory: list[SecureServer], certs: Certificates
) -> None:
    """nats-py upgrades to TLS only when the server asks: with TLS options set, a plain
    server (or an impostor) is refused instead of carrying the traffic unencrypted."""
    server = start(server_factory, tmp_path, "")
    err = await refused_fast(server.url, ConnectOptions(tls_ca=str(certs.ca)), TLSRefused)
    assert "did not use TLS" in str(err)


async def test_mutual_tls(tmp_path: Path, server_factory: list[SecureServer], certs: Certificates) -> None:
    server = start(server_factory, tmp_path, tls_block(certs, verify_clients=True))
    options = ConnectOptions(
        tls_ca=str(certs.ca),
        tls_cert=str(certs.client_cert),
        tls_key=str(certs.client_key),
        tls_server_name="nats.perdure.test",
    )
    await round_trip(server.url, options)
    without_cert = ConnectOptions(tls_ca=str(certs.ca), tls_server_name="nats.perdure.test")
    err = await refused_fast(server.url, without_cert, TLSRefused)
    assert "CERTIFICATE_REQUIRED" in str(err)


# ----------------------------------------------------- the daemon: flags and variables


async def test_worker_daemon_with_flags_and_variables(
    tmp_path: Path, server_factory: list[SecureServer], certs: Certificates
) -> None:
    """``perdure worker`` with TLS from variables and the password from a file (a flag);
    a client configured by the same ``PERDURE_*`` variables; no secret in the runtime's log."""
    server = start(
        server_factory,
        tmp_path,
        tls_block(certs) + f'authorization {{ users = [ {{user: rt, password: "{PASSWORD}"}} ] }}',
    )
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    env = {
        "PERDURE_USER": "rt",
        "PERDURE_TLS_CA": str(certs.ca),
        "PERDURE_TLS_SERVER_NAME": "nats.perdure.test",
    }
    namespace = "d" + uuid.uuid4().hex[:10]
    runtime = RuntimeProcess(
        server.url,
        namespace,
        "rt-daemon",
        extra_args=("--password-file", str(password_file)),
        env={**env, "PERDURE_LOG_LEVEL": "DEBUG"},
    )
    await runtime.astart()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in {**env, "PERDURE_PASSWORD": PASSWORD}.items():
                mp.setenv(name, value)
            client = await Client.connect(server.url, namespace=namespace)  # options from the variables
        try:
            handle = await client.start("pipeline", 1, id="daemon-1")
            assert len(await handle.result(timeout=30)) == 13
        finally:
            await client.close()
    finally:
        assert await runtime.aterminate() == 0
    assert PASSWORD not in runtime.output()


async def test_worker_daemon_refused_login_exits_at_once(
    tmp_path: Path, server_factory: list[SecureServer]
) -> None:
    server = start(
        server_factory, tmp_path, f'authorization {{ users = [ {{user: rt, password: "{PASSWORD}"}} ] }}'
    )
    wrong = tmp_path / "wrong"
    wrong.write_text(PASSWORD + "-old")
    args = ["worker", "workflows", "--url", server.url, "--user", "rt", "--password-file", str(wrong)]
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "perdure.runtime.daemon", *args,
        env={**os.environ, "PYTHONPATH": str(TESTS_DIR)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2, err.decode()
    assert time.monotonic() - started < 8
    out = err.decode()
    assert "nats.auth_refused" in out and "refused the login" in out and PASSWORD not in out


# ------------------------------------------------------------------ options themselves


def test_options_from_variables_and_files(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    options = ConnectOptions.from_env(
        {"PERDURE_TOKEN_FILE": str(token_file), "PERDURE_INBOX_PREFIX": "_INBOX_svc"}
    )
    assert options.token == TOKEN and options.inbox_prefix == "_INBOX_svc"
    assert TOKEN not in repr(options) and TOKEN not in options.describe()
    settings = Settings(connect=ConnectOptions(user="u", password=PASSWORD))
    assert PASSWORD not in repr(settings)
    with pytest.raises(ConfigurationError, match="one way to log in"):
        ConnectOptions(user="u", password="p", token="t")
    with pytest.raises(ConfigurationError, match="PERDURE_TLS_KEY"):
        ConnectOptions.from_env({"PERDURE_TLS_CERT": str(token_file)})
    with pytest.raises(ConfigurationError, match="PERDURE_CREDS_FILE: no such file"):
        ConnectOptions.from_env({"PERDURE_CREDS_FILE": str(tmp_path / "missing.creds")})


def test_every_connecting_verb_takes_the_flags(tmp_path: Path) -> None:
    """`perdure worker` and `perdure replay` take the same flags; a secret only as a file."""
    from perdure.runtime.daemon import _parser

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    ca = make_certificates(tmp_path / "certs").ca
    for verb in (["worker", "mod"], ["replay", "mod", "--execution", "x"]):
        args = _parser().parse_args([*verb, "--token-file", str(token_file), "--tls-ca", str(ca)])
        options = ConnectOptions.from_args(args)
        assert options.token == TOKEN and options.tls_ca == str(ca)
        with pytest.raises(SystemExit):  # no --password / --token flag with the secret itself
            _parser().parse_args([*verb, "--password", PASSWORD])
        # a secret given where its file is expected is not echoed back
        args = _parser().parse_args([*verb, "--password-file", PASSWORD, "--user", "u"])
        with pytest.raises(ConfigurationError) as caught:
            ConnectOptions.from_args(args)
        assert PASSWORD not in str(caught.value) and "--password-file" in str(caught.value)
