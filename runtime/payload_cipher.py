"""Encryption at rest of user payloads: the ``PayloadCipher`` interface and AES-GCM keys.

A cipher turns one payload's bytes into ciphertext and back; ``runtime/payload_seal.py``
applies it to every payload (inputs, results, signals, checkpoints) before it is published,
appended or put, so histories, inbox and work messages, KV records and offloaded objects
hold ciphertext. Metadata (event kinds, ids, times, error codes) stays readable.

Keys come from ``PERDURE_PAYLOAD_KEYS`` (``id:base64key,id2:base64key``) or
``PERDURE_PAYLOAD_KEY_FILE`` (one ``id:base64key`` a line, ``#`` comments). Keys are 16, 24
or 32 bytes (AES-128/192/256). The first key encrypts; every key decrypts, by the id stored
with each ciphertext: rotate by putting a new key first and keeping the old ones.
A key never appears in a log, an error or a repr.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Protocol

from .errors import ConfigurationError, PayloadDecryptFailed, PayloadKeyMissing

NONCE_BYTES = 12  # AES-GCM's standard nonce: random per payload (2^32 payloads per key is safe)
_KEY_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


class PayloadCipher(Protocol):
    """What the payload sealer needs from a cipher (implement it to use a KMS, say).

    ``encrypt`` returns ``(key_id, ciphertext)``; ``decrypt`` gets them back and returns the
    plaintext, raising ``PayloadKeyMissing`` for an unknown key id and ``PayloadDecryptFailed``
    when the key does not open the ciphertext. Both must be safe to call from any task."""

    def encrypt(self, plaintext: bytes) -> tuple[str, bytes]: ...

    def decrypt(self, key_id: str, ciphertext: bytes) -> bytes: ...


class AesGcmKeys:
    """AES-GCM with a key ring: ``keys`` maps key ids to keys, the first one encrypts."""

    __slots__ = ("_aeads", "primary")

    def __init__(self, keys: dict[str, bytes]) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:  # pragma: no cover - a dependency; said clearly all the same
            raise ConfigurationError("payload encryption needs the 'cryptography' package") from None
        if not keys:
            raise ConfigurationError("payload encryption needs at least one key")
        for key_id, key in keys.items():
            if not key_id or not set(key_id) <= _KEY_ID_CHARS:
                raise ConfigurationError(f"payload key id {key_id!r} is not valid: use A-Z a-z 0-9 _ - .")
            if len(key) not in (16, 24, 32):
                raise ConfigurationError(
                    f"payload key {key_id!r} is {len(key)} bytes; AES-GCM needs 16, 24 or 32"
                )
        self.primary = next(iter(keys))
        self._aeads = {key_id: AESGCM(key) for key_id, key in keys.items()}

    def __repr__(self) -> str:
        return f"AesGcmKeys(ids={list(self._aeads)!r})"  # ids only, never the keys

    def encrypt(self, plaintext: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        aad = self.primary.encode()  # binds the ciphertext to its key id
        return self.primary, nonce + self._aeads[self.primary].encrypt(nonce, plaintext, aad)

    def decrypt(self, key_id: str, ciphertext: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        aead = self._aeads.get(key_id)
        if aead is None:
            raise PayloadKeyMissing(
                f"payload is encrypted with key {key_id!r}, which is not among the configured "
                f"keys {sorted(self._aeads)} (PERDURE_PAYLOAD_KEYS / PERDURE_PAYLOAD_KEY_FILE)"
            )
        try:
            return aead.decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            raise PayloadDecryptFailed(
                f"payload encrypted with key {key_id!r} does not decrypt with the configured key "
                "of that id (a wrong key, or the data was altered)"
            ) from None


def parse_keys(text: str, *, source: str) -> dict[str, bytes]:
    """``id:base64key`` entries separated by commas or new lines (``#`` starts a comment).
    Errors name the source and the entry's position, never its value."""
    keys: dict[str, bytes] = {}
    entries = [e.split("#", 1)[0].strip() for line in text.splitlines() for e in line.split(",")]
    for position, entry in enumerate((e for e in entries if e), start=1):
        key_id, sep, encoded = entry.partition(":")
        if not sep:
            raise ConfigurationError(f"{source}: entry {position} is not 'id:base64key'")
        try:
            key = base64.b64decode(encoded.strip() + "=" * (-len(encoded.strip()) % 4), altchars=b"-_")
        except (binascii.Error, ValueError):
            raise ConfigurationError(f"{source}: the key of entry {position} is not base64") from None
        if key_id.strip() in keys:
            raise ConfigurationError(f"{source}: key id {key_id.strip()!r} appears twice")
        keys[key_id.strip()] = key
    return keys


def cipher_from_env() -> AesGcmKeys | None:
    """The cipher configured by ``PERDURE_PAYLOAD_KEYS`` or ``PERDURE_PAYLOAD_KEY_FILE``, or None."""
    text = os.environ.get("PERDURE_PAYLOAD_KEYS", "").strip()
    if text:
        return AesGcmKeys(parse_keys(text, source="PERDURE_PAYLOAD_KEYS"))
    path = os.environ.get("PERDURE_PAYLOAD_KEY_FILE", "").strip()
    if path:
        return cipher_from_file(path)
    return None


def cipher_from_file(path: str) -> AesGcmKeys:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigurationError(f"payload key file {path}: {exc.strerror}") from None
    return AesGcmKeys(parse_keys(text, source=f"payload key file {path}"))


def new_key() -> str:
    """A fresh 256-bit key, base64 (for ``PERDURE_PAYLOAD_KEYS``)."""
    return base64.b64encode(os.urandom(32)).decode()
