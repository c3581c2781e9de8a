"""Payload size limits: what fits in one NATS message once the envelope is counted.

nats-server refuses a message whose payload plus headers exceeds its ``max_payload``
(1 MiB by default) and *closes the connection* that sent it; nats-py refuses one whose
payload alone exceeds it before sending. Both are faults far from their cause, so every
entry point checks the user's payload against ``payload_limit(max_payload)`` first and
raises ``PayloadTooLarge`` naming the size, the limit and what was too large.

Payloads of any size (issue 12): a message over ``offload_threshold()`` has its largest
payloads stored in the namespace's object store and replaced by references
(runtime/payload_seal.py), so the limit a user meets is ``max_payload_bytes()`` (1 GiB by
default, ``PERDURE_PAYLOAD_MAX_BYTES``), not the server's ``max_payload``. ``payload_limit``
still bounds what one message may carry (requests over core NATS, the threshold itself).

The reserve covers Perdure's envelope around a user payload: the JSON of an inbox message
or history step, the token, the ``Nats-Msg-Id``/``Perdure-Reply``/JetStream headers.
"""

from __future__ import annotations

import os

from .errors import ConfigurationError, PayloadTooLarge

DEFAULT_MAX_PAYLOAD = 1024 * 1024  # nats-server's default max_payload
ENVELOPE_RESERVE = 16 * 1024  # bytes kept for Perdure's envelope and headers
DEFAULT_OFFLOAD_THRESHOLD = 256 * 1024  # a message over this has its payloads offloaded
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024 * 1024  # the largest payload accepted (offloaded)
MAX_BYTES_REASON = "PERDURE_PAYLOAD_MAX_BYTES, the largest payload Perdure stores"


_read: dict[str, int] = {}  # variables read, by name: once per process (reread_environment)


def _env_bytes(name: str, default: int) -> int:
    """``name``'s value, read once per process: these are read where payloads are made, a
    few times per workflow, and an ``os.environ`` lookup costs microseconds each (measured:
    3% of an in-process burst's CPU). Every runtime of a namespace must use the same values,
    set before it starts."""
    number = _read.get(name)
    if number is None:
        number = _read[name] = _parse_bytes(name, default)
    return number


def reread_environment() -> None:
    """Read the variables again at their next use (tests that change them in-process)."""
    _read.clear()


def _parse_bytes(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r} is not a number of bytes") from None
    if number < 1024:
        raise ConfigurationError(f"{name}={value!r} must be at least 1024 bytes")
    return number


def offload_threshold() -> int:
    """Bytes of one message over which its payloads go to the object store
    (``PERDURE_OFFLOAD_THRESHOLD``; the sealer also keeps it under ``payload_limit``)."""
    return _env_bytes("PERDURE_OFFLOAD_THRESHOLD", DEFAULT_OFFLOAD_THRESHOLD)


def max_payload_bytes() -> int:
    """The largest single payload (input, result, signal, checkpoint) accepted, in bytes
    (``PERDURE_PAYLOAD_MAX_BYTES``). Read where a payload is made, workflow code included:
    every runtime of a namespace must use the same value, or replays may decide differently."""
    return _env_bytes("PERDURE_PAYLOAD_MAX_BYTES", DEFAULT_MAX_PAYLOAD_BYTES)


def payload_limit(max_payload: int | None) -> int:
    """The largest user payload accepted, given the server's ``max_payload``."""
    server = max_payload if max_payload and max_payload > 0 else DEFAULT_MAX_PAYLOAD
    return max(server - ENVELOPE_RESERVE, 1024)


def start_input_limit(max_payload: int | None) -> int:
    """The largest workflow input accepted by a start: half of ``payload_limit``.

    The first history step records the input (``WorkflowStarted``) together with the first
    decisions, and a workflow commonly hands its input on to an activity or a child (their
    ``input`` is in that same step): an input over half the limit would make that step too
    large to append. (Measured: a 900 KiB input passed to an activity makes a first step of
    1,843,514 bytes, which the runtime then retries every second.)
    """
    return payload_limit(max_payload) // 2


def step_inputs_limit(max_payload: int | None) -> int:
    """The bytes of inbox messages one step takes in: half of ``payload_limit``, so that a
    step's history message holds its inputs and still has room for the decisions they lead
    to. Messages waiting beyond it wait for the next step (actors/step_inputs.take_step)."""
    return payload_limit(max_payload) // 2


ENVELOPE_REASON = f"the NATS server's max_payload less {ENVELOPE_RESERVE} bytes of envelope"
START_INPUT_REASON = (
    "half of the payload limit: the first history step records the input and what the workflow does with it"
)


def check_size(size: int, limit: int, *, what: str, reason: str = ENVELOPE_REASON) -> None:
    """Raise ``PayloadTooLarge`` if ``size`` bytes of ``what`` exceed ``limit`` (``reason``
    says where the limit comes from)."""
    if size > limit:
        raise PayloadTooLarge(
            f"{what} is {size} bytes; the limit is {limit} bytes ({reason})",
            size=size,
            limit=limit,
        )
