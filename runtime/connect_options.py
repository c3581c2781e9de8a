"""How to authenticate to NATS and secure the connection: one frozen value, built once.

``ConnectOptions`` holds every way a NATS deployment asks a client to prove who it is
(user and password, token, NKey seed, credentials file with a JWT and a seed) and how to
check the server (TLS with a CA file, a client certificate and key, the name the server's
certificate must carry). It comes from ``PERDURE_*`` variables, command-line flags or code,
and ``Connection.connect`` turns it into nats-py's arguments.

Secrets: a password or token is read from a variable or a file (``PERDURE_PASSWORD_FILE``,
``PERDURE_TOKEN_FILE``), never from a flag (``ps`` shows flags to everyone on the machine);
seeds and creds stay in their files and nats-py reads them when it signs the server's nonce.
``repr()`` shows which options are set, never a secret, so a logged ``Settings`` is safe.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigurationError
from .tls import client_context

# field -> the variable that sets it
ENV: dict[str, str] = {
    "user": "PERDURE_USER",
    "password": "PERDURE_PASSWORD",
    "token": "PERDURE_TOKEN",
    "nkey_seed_file": "PERDURE_NKEY_SEED_FILE",
    "creds_file": "PERDURE_CREDS_FILE",
    "tls_ca": "PERDURE_TLS_CA",
    "tls_cert": "PERDURE_TLS_CERT",
    "tls_key": "PERDURE_TLS_KEY",
    "tls_server_name": "PERDURE_TLS_SERVER_NAME",
    "inbox_prefix": "PERDURE_INBOX_PREFIX",
}
# secrets that may also come from a file: field -> variable naming the file
SECRET_FILES: dict[str, str] = {"password": "PERDURE_PASSWORD_FILE", "token": "PERDURE_TOKEN_FILE"}
_SECRETS = frozenset(SECRET_FILES)
_FILES = ("nkey_seed_file", "creds_file", "tls_ca", "tls_cert", "tls_key")


@dataclass(frozen=True, slots=True, repr=False)
class ConnectOptions:
    """Authentication and TLS for the connection to NATS; every field is optional.

    At most one way to log in: ``user`` + ``password``, ``token``, ``nkey_seed_file`` or
    ``creds_file`` (credentials in the URL, ``nats://user:pass@host``, work too).
    TLS is on when the URL says ``tls://``, the server requires it, or any ``tls_*`` is set;
    ``tls_ca`` replaces the system's CAs, ``tls_cert`` + ``tls_key`` present a client
    certificate (mutual TLS), ``tls_server_name`` is the name the server's certificate
    must carry when it differs from the host in the URL. ``inbox_prefix`` replaces
    ``_INBOX`` in reply subjects, so a restricted user's permissions can name its own.
    """

    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkey_seed_file: str | None = None
    creds_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None
    inbox_prefix: str | None = None

    def __post_init__(self) -> None:
        logins = [
            name
            for name, given in (
                ("user/password", self.user is not None or self.password is not None),
                ("token", self.token is not None),
                ("NKey seed", self.nkey_seed_file is not None),
                ("credentials file", self.creds_file is not None),
            )
            if given
        ]
        if len(logins) > 1:
            raise ConfigurationError(f"give one way to log in to NATS, not {' and '.join(logins)}")
        if self.password is not None and not self.user:
            raise ConfigurationError(f"a NATS password needs a user ({ENV['user']})")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigurationError(
                f"a client certificate needs its key: set both {ENV['tls_cert']} and {ENV['tls_key']}"
            )
        for name in _FILES:
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigurationError(f"{ENV[name]}: no such file {path!r}")
        if self.inbox_prefix is not None and not _subject_prefix_ok(self.inbox_prefix):
            raise ConfigurationError(f"{ENV['inbox_prefix']}={self.inbox_prefix!r} is not a subject prefix")

    # ------------------------------------------------------------ construction

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: str | None) -> ConnectOptions:
        """From ``PERDURE_*`` variables; ``overrides`` (flags, arguments) win when not None."""
        env = os.environ if env is None else env
        values: dict[str, str | None] = {name: env.get(var) or None for name, var in ENV.items()}
        for name, var in SECRET_FILES.items():
            path = env.get(var)
            if path and values[name] is None:
                values[name] = _read_secret(path, var)
        for name, value in overrides.items():
            if name in SECRET_FILES and value is not None:
                values[name] = _read_secret(value, f"--{name}-file")
            elif value is not None:
                values[name] = value
        return cls(**values)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ConnectOptions:
        """From the flags ``add_arguments`` declared, over the ``PERDURE_*`` variables."""
        return cls.from_env(**{name: getattr(args, f"nats_{name}", None) for name in _FLAGS})

    def replace(self, **changes: Any) -> ConnectOptions:
        return replace(self, **changes)

    # ------------------------------------------------------------------- use

    @property
    def tls_requested(self) -> bool:
        return any(getattr(self, name) is not None for name in ("tls_ca", "tls_cert", "tls_server_name"))

    def nats_kwargs(self) -> dict[str, Any]:
        """nats-py ``connect()`` arguments (only those set: a URL's credentials still apply)."""
        out: dict[str, Any] = {}
        if self.user is not None:
            out["user"] = self.user
        if self.password is not None:
            out["password"] = self.password
        if self.token is not None:
            out["token"] = self.token
        if self.nkey_seed_file is not None:
            out["nkeys_seed"] = self.nkey_seed_file
        if self.creds_file is not None:
            out["user_credentials"] = self.creds_file
        if self.tls_requested:
            out["tls"] = client_context(self.tls_ca, self.tls_cert, self.tls_key)
        if self.tls_server_name is not None:
            out["tls_hostname"] = self.tls_server_name
        if self.inbox_prefix is not None:
            out["inbox_prefix"] = self.inbox_prefix
        return out

    def describe(self) -> str:
        """What is configured, for logs and errors: names of files, never a secret."""
        parts = []
        if self.user is not None:
            parts.append(f"user {self.user!r}" + (" with a password" if self.password else ""))
        if self.token is not None:
            parts.append("a token")
        if self.nkey_seed_file is not None:
            parts.append(f"NKey seed {self.nkey_seed_file}")
        if self.creds_file is not None:
            parts.append(f"credentials {self.creds_file}")
        if self.tls_requested:
            tls = [f"CA {self.tls_ca}" if self.tls_ca else "system CAs"]
            if self.tls_cert:
                tls.append(f"client certificate {self.tls_cert}")
            if self.tls_server_name:
                tls.append(f"server name {self.tls_server_name!r}")
            parts.append("TLS (" + ", ".join(tls) + ")")
        return ", ".join(parts) or "no credentials"

    def __repr__(self) -> str:
        shown = [
            f"{f.name}={'***' if f.name in _SECRETS else repr(value)}"
            for f in fields(self)
            if (value := getattr(self, f.name)) is not None
        ]
        return f"ConnectOptions({', '.join(shown)})"

    __str__ = __repr__


# ------------------------------------------------------------------ command line

# flag -> (field, help); secrets only as files
_FLAGS: dict[str, tuple[str, str]] = {
    "user": ("--user", "NATS user (PERDURE_USER; the password from PERDURE_PASSWORD or --password-file)"),
    "password": ("--password-file", "file holding the NATS password (PERDURE_PASSWORD_FILE)"),
    "token": ("--token-file", "file holding the NATS token (PERDURE_TOKEN, PERDURE_TOKEN_FILE)"),
    "nkey_seed_file": ("--nkey-seed-file", "NKey seed file (PERDURE_NKEY_SEED_FILE)"),
    "creds_file": ("--creds", "credentials file, JWT and seed (PERDURE_CREDS_FILE)"),
    "tls_ca": ("--tls-ca", "CA certificates to trust for the server (PERDURE_TLS_CA)"),
    "tls_cert": ("--tls-cert", "client certificate for mutual TLS (PERDURE_TLS_CERT)"),
    "tls_key": ("--tls-key", "key of the client certificate (PERDURE_TLS_KEY)"),
    "tls_server_name": ("--tls-server-name", "name the server certificate must carry"),
    "inbox_prefix": ("--inbox-prefix", "reply subject prefix instead of _INBOX (PERDURE_INBOX_PREFIX)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The connection security flags, on any verb that connects to NATS."""
    # No abbreviations: `--password s3cret` must not pass for `--password-file s3cret`.
    parser.allow_abbrev = False
    group = parser.add_argument_group("NATS authentication and TLS")
    for name, (flag, text) in _FLAGS.items():
        group.add_argument(flag, dest=f"nats_{name}", default=None, help=text)


# ------------------------------------------------------------------------ helpers


def _read_secret(path: str, source: str) -> str:
    # The path is not shown: given by mistake, it may be the secret itself.
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigurationError(f"{source}: cannot read the file it names ({exc.strerror})") from None
    if not value:
        raise ConfigurationError(f"{source}: the file it names is empty")
    return value


def _subject_prefix_ok(prefix: str) -> bool:
    tokens = prefix.split(".")
    return all(t and not any(c in t for c in " \t*>") for t in tokens)
