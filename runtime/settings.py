"""Runtime and client settings, from arguments or ``PERDURE_*`` environment variables."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field, replace

from .connect_options import ConnectOptions
from .errors import ConfigurationError
from .limits import offload_threshold
from .naming import Names
from .payload_cipher import PayloadCipher, cipher_from_env

DEFAULT_CONNECT_TIMEOUT = 10.0


def env_int(name: str, default: int) -> int:
    """``PERDURE_*`` integer variable; a bad value is a ``ConfigurationError`` naming it."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r} is not an integer") from None


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r} is not a number (seconds)") from None
    if not number > 0:
        raise ConfigurationError(f"{name}={value!r} must be more than 0")
    return number


def connect_timeout_from_env() -> float:
    """How long the first connect to NATS may take (``PERDURE_CONNECT_TIMEOUT``, seconds)."""
    return env_float("PERDURE_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT)


def _env_budget(name: str, default: float) -> float:
    """Seconds, or 0 (the step budget: 0 runs workflow steps inline, unguarded)."""
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r} is not a number") from None


@dataclass(frozen=True, slots=True)
class Settings:
    """What a runtime needs to know. Every field has a ``PERDURE_<FIELD>`` variable."""

    url: str | None = None  # comma-separated seed URLs; None: the embedded server
    namespace: str = "perdure"
    replicas: int = 1  # R1 on one server, R3 in a cluster
    partitions: int = 12  # inbox partitions; fixed once the namespace is provisioned
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}")
    lease_ttl: float = 3.0  # a dead runtime's partitions move after about this long
    cache_size: int = 10_000  # live executions kept in memory per runtime
    activity_concurrency: int = 64  # activity attempts running at once per runtime
    # Attempts of activities hosted here start right after the step that schedules them,
    # in this process (actors/local_activities.py); off: every attempt goes through the work stream.
    eager_activities: bool = True
    marker_ttl: float = 3600.0  # how long timer expiry markers stay visible to a new owner
    history_warn_events: int = 10_000  # workflow.info().history_long turns true past this
    # Seconds one workflow step may run before it fails (StepBudgetExceeded: code that blocks,
    # such as time.sleep or a busy loop); steps run in workflow threads. 0: inline, unguarded.
    step_budget: float = 2.0
    # The first connect to NATS gives up after this long (then reconnects are endless).
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    # Authentication and TLS (PERDURE_USER, PERDURE_CREDS_FILE, PERDURE_TLS_CA...; repr redacted).
    connect: ConnectOptions = field(default_factory=ConnectOptions)
    # Payloads (runtime/payload_seal.py): a message over this many bytes has its payloads stored
    # in the <NS>_PAYLOADS object store (PERDURE_OFFLOAD_THRESHOLD; kept under the server's max_payload).
    offload_threshold: int = field(default_factory=offload_threshold)
    # Seconds offloaded payloads are kept (the object store's max age); 0: until their history
    # is purged. A history older than this can no longer be replayed: keep it above your runs' life.
    payload_retention: float = 0.0
    # Encryption at rest of payloads (PERDURE_PAYLOAD_KEYS / PERDURE_PAYLOAD_KEY_FILE); None: plain.
    payload_cipher: PayloadCipher | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        base = cls(
            url=os.environ.get("PERDURE_URL") or None,
            namespace=os.environ.get("PERDURE_NAMESPACE", "perdure"),
            replicas=env_int("PERDURE_REPLICAS", 1),
            partitions=env_int("PERDURE_PARTITIONS", 12),
            connect_timeout=connect_timeout_from_env(),
            eager_activities=os.environ.get("PERDURE_EAGER_ACTIVITIES", "1") not in ("0", "false", "no"),
            step_budget=_env_budget("PERDURE_STEP_BUDGET", 2.0),
            connect=ConnectOptions.from_env(),
            payload_retention=_env_budget("PERDURE_PAYLOAD_RETENTION", 0.0),
            payload_cipher=cipher_from_env(),
        )
        if os.environ.get("PERDURE_NAME"):
            base = replace(base, name=os.environ["PERDURE_NAME"])
        clean = {k: v for k, v in overrides.items() if v is not None}
        return replace(base, **clean)  # type: ignore[arg-type]

    @property
    def names(self) -> Names:
        return Names(self.namespace)

    def __post_init__(self) -> None:
        Names(self.namespace)  # validates
        if self.replicas < 1 or self.partitions < 1:
            raise ConfigurationError("replicas and partitions must be at least 1")
        if self.step_budget < 0:
            raise ConfigurationError("step_budget must be 0 (unguarded) or more seconds")
        if not self.connect_timeout > 0:
            raise ConfigurationError("connect_timeout must be more than 0 seconds")
        if self.offload_threshold < 1024 or self.payload_retention < 0:
            raise ConfigurationError(
                "offload_threshold must be at least 1024 bytes, payload_retention 0 (keep) or more seconds"
            )
