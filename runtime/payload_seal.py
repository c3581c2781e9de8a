"""Payload sealing at the I/O edges: large payloads offloaded (claim check), payloads encrypted.

Every user payload on the wire is a ``msgspec.Raw`` field of a wire ``Struct`` (an input, a
result, a signal, a checkpoint, error details). ``PayloadSealer.encode`` walks a struct's Raw
fields (the fields that can hold one are found once per type) and, before it is published,
appended or put:

- encrypts each payload when a cipher is configured (runtime/payload_cipher.py):
  ``{"$perdure_enc":{"kid":"<key id>","data":"<base64 nonce+ciphertext>"}}``;
- if the message is still over ``threshold`` bytes, offloads its largest payloads, largest
  first, to the namespace's object store until it fits:
  ``{"$perdure_ref":{"key":"<execution>/<sha256>","size":N,"sha256":"..."}}``. The object
  holds exactly the bytes the field would have held (ciphertext when encrypting). Keys are
  content-addressed per execution, so a payload forwarded from inbox to history to a work
  item is stored once; ``drop_unreferenced`` deletes an execution's objects when its old
  runs' history is purged.

``decode`` reverses it after a read. Workflow and activity code only ever see plain values;
replay stays synchronous because sealing happens before an append and opening after a load.
A sealed payload that is forwarded without being read (a completion's result, heartbeat
details) passes through unchanged and is opened by whoever reads it.

Fast path (the benchmark's): without a cipher, a message under the threshold is encoded and
sent as is, and a read whose bytes do not contain ``"$perdure_`` is decoded as is (no walk).
A user value spelled exactly like an envelope is therefore reserved.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import types
import typing
import weakref
from dataclasses import dataclass
from typing import Any, TypeVar, Union

import msgspec

from . import codec, limits
from .errors import PayloadKeyMissing, PayloadUnreadable
from .naming import Names
from .nats_client import Connection
from .nats_objects import ObjectBucket
from .payload_cipher import PayloadCipher, cipher_from_env
from .settings import Settings

T = TypeVar("T")

MARK = b'"$perdure_'
REF_PREFIX = b'{"$perdure_ref":'
ENC_PREFIX = b'{"$perdure_enc":'
ENCRYPTED_PLACEHOLDER = msgspec.Raw(b'"<encrypted>"')  # shown by the CLI/console without the key
MIN_OFFLOAD = 1024  # a reference is ~150 bytes: offloading anything smaller gains nothing


class Ref(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    size: int
    sha256: str


class Enc(msgspec.Struct, frozen=True, kw_only=True):
    kid: str
    data: str


class _RefEnvelope(msgspec.Struct, frozen=True):
    ref: Ref = msgspec.field(name="$perdure_ref")


class _EncEnvelope(msgspec.Struct, frozen=True):
    enc: Enc = msgspec.field(name="$perdure_enc")


_ref_decoder = msgspec.json.Decoder(_RefEnvelope)
_enc_decoder = msgspec.json.Decoder(_EncEnvelope)


@dataclass(frozen=True, slots=True)
class PayloadPolicy:
    """How payloads are sealed: ``threshold`` (bytes of one message over which its payloads
    are offloaded), ``max_bytes`` (largest payload accepted at all), ``cipher`` (None: plain)."""

    threshold: int = limits.DEFAULT_OFFLOAD_THRESHOLD
    max_bytes: int = limits.DEFAULT_MAX_PAYLOAD_BYTES
    cipher: PayloadCipher | None = None

    @classmethod
    def of(cls, settings: Settings) -> PayloadPolicy:
        return cls(
            threshold=settings.offload_threshold,
            max_bytes=limits.max_payload_bytes(),
            cipher=settings.payload_cipher,
        )

    @classmethod
    def from_env(cls) -> PayloadPolicy:
        return cls(
            threshold=limits.offload_threshold(),
            max_bytes=limits.max_payload_bytes(),
            cipher=cipher_from_env(),
        )


def is_sealed(raw: msgspec.Raw) -> bool:
    head = memoryview(raw)[:16].tobytes()
    return head in (REF_PREFIX, ENC_PREFIX)


class PayloadSealer:
    """Seals and opens the payloads of one namespace's messages on one connection."""

    def __init__(self, conn: Connection, names: Names, policy: PayloadPolicy) -> None:
        self.policy = policy
        self._threshold = min(policy.threshold, conn.payload_limit if conn.is_connected else policy.threshold)
        self._cipher = policy.cipher
        self._objects = ObjectBucket(conn, names.payloads_bucket)

    @property
    def encrypting(self) -> bool:
        return self._cipher is not None

    # ------------------------------------------------------------------ writing

    async def encode(self, struct: Any, execution_id: str) -> bytes:
        """``struct`` as JSON, its payloads encrypted and, if too large, offloaded."""
        data = codec.encode(struct)
        if self._cipher is None and len(data) <= self._threshold:
            return data  # the fast path: nothing to seal
        raws = _collect(struct)
        if not raws:
            return data
        mapping: dict[int, msgspec.Raw] = {}
        if self._cipher is not None:
            for raw in raws:
                if not _is_null(raw) and not is_sealed(raw):
                    mapping[id(raw)] = self._encrypt(raw)

        def current(raw: msgspec.Raw) -> msgspec.Raw:
            return mapping.get(id(raw), raw)

        total = len(data) + sum(len(current(r)) - len(r) for r in raws)
        if total > self._threshold:
            for raw in sorted(raws, key=lambda r: len(current(r)), reverse=True):
                value = current(raw)
                if total <= self._threshold or len(value) < MIN_OFFLOAD:
                    break
                if memoryview(value)[:16].tobytes() == REF_PREFIX:
                    continue
                ref = await self._offload(value, execution_id)
                total -= len(value) - len(ref)
                mapping[id(raw)] = ref
        return codec.encode(_rebuild(struct, mapping)) if mapping else data

    async def seal_raw(self, raw: msgspec.Raw, execution_id: str) -> msgspec.Raw:
        """One payload sealed on its own (heartbeat details kept in a KV record)."""
        if _is_null(raw) or is_sealed(raw):
            return raw
        if self._cipher is not None:
            raw = self._encrypt(raw)
        if len(raw) > self._threshold:
            raw = await self._offload(raw, execution_id)
        return raw

    def _encrypt(self, raw: msgspec.Raw) -> msgspec.Raw:
        assert self._cipher is not None
        key_id, ciphertext = self._cipher.encrypt(bytes(raw))
        envelope = _EncEnvelope(Enc(kid=key_id, data=base64.b64encode(ciphertext).decode()))
        return msgspec.Raw(codec.encode(envelope))

    async def _offload(self, value: msgspec.Raw, execution_id: str) -> msgspec.Raw:
        size = len(value)
        limits.check_size(size, self.policy.max_bytes, what="a payload", reason=limits.MAX_BYTES_REASON)
        digest = hashlib.sha256(value).hexdigest()
        key = f"{execution_id}/{digest}"
        if not await self._objects.exists(key):
            await self._objects.put(key, bytes(value))
        return msgspec.Raw(codec.encode(_RefEnvelope(Ref(key=key, size=size, sha256=digest))))

    # ------------------------------------------------------------------ reading

    async def decode(self, decoder: msgspec.json.Decoder[T], data: bytes, *, what: str) -> T:
        """``codec.decode`` and then ``open`` (skipped when ``data`` holds no envelope)."""
        value = codec.decode(decoder, data, what=what)
        if MARK not in data:
            return value
        return await self.open(value)

    async def open(self, struct: T, *, lenient: bool = False) -> T:
        """``struct`` with every sealed payload fetched and decrypted. ``lenient`` (CLI,
        console): a payload this process cannot decrypt reads as ``"<encrypted>"``."""
        mapping: dict[int, msgspec.Raw] = {}
        for raw in _collect(struct):
            if is_sealed(raw):
                mapping[id(raw)] = await self.open_raw(raw, lenient=lenient)
        return _rebuild(struct, mapping) if mapping else struct

    async def open_raw(self, raw: msgspec.Raw, *, lenient: bool = False) -> msgspec.Raw:
        value = bytes(raw)
        if value.startswith(REF_PREFIX):
            ref = codec.decode(_ref_decoder, value, what="payload reference").ref
            value = await self._objects.get(ref.key)
            if hashlib.sha256(value).hexdigest() != ref.sha256:
                raise PayloadUnreadable(f"payload object {ref.key} does not match its digest")
        if value.startswith(ENC_PREFIX):
            enc = codec.decode(_enc_decoder, value, what="encrypted payload").enc
            if self._cipher is None:
                if lenient:
                    return ENCRYPTED_PLACEHOLDER
                raise PayloadKeyMissing(
                    f"payload is encrypted with key {enc.kid!r} and no payload key is configured "
                    "(PERDURE_PAYLOAD_KEYS / PERDURE_PAYLOAD_KEY_FILE)"
                )
            try:
                value = self._cipher.decrypt(enc.kid, base64.b64decode(enc.data))
            except PayloadUnreadable:
                if lenient:
                    return ENCRYPTED_PLACEHOLDER
                raise
        return msgspec.Raw(value)

    async def preview_raw(self, raw: msgspec.Raw, *, max_fetch: int = 64 * 1024) -> msgspec.Raw:
        """For display (the console): ``open_raw(lenient=True)``, except that an offloaded
        payload over ``max_fetch`` bytes is not fetched but shown as ``"<offloaded: N bytes>"``."""
        if memoryview(raw)[:16].tobytes() == REF_PREFIX:
            ref = codec.decode(_ref_decoder, bytes(raw), what="payload reference").ref
            if ref.size > max_fetch:
                return msgspec.Raw(codec.encode(f"<offloaded: {ref.size} bytes>"))
        return await self.open_raw(raw, lenient=True) if is_sealed(raw) else raw

    # ------------------------------------------------------------------ cleanup

    async def drop_unreferenced(self, dropped: list[bytes], kept: list[bytes]) -> int:
        """Delete the objects referenced by the ``dropped`` messages and by none of ``kept``
        (an execution's purged history steps and the ones it keeps). Returns how many."""
        keys = _ref_keys(dropped) - _ref_keys(kept)
        for key in sorted(keys):
            await self._objects.delete(key)
        return len(keys)


def _ref_keys(messages: list[bytes]) -> set[str]:
    """The object keys referenced in ``messages`` (raw JSON: found without knowing the type)."""
    keys: set[str] = set()
    for data in messages:
        start = data.find(REF_PREFIX)
        while start >= 0:
            end = data.find(b"}}", start)
            if end < 0:
                break
            with contextlib.suppress(msgspec.DecodeError):
                keys.add(_ref_decoder.decode(data[start : end + 2]).ref.key)
            start = data.find(REF_PREFIX, end)
    return keys


# ---------------------------------------------------------------------- walking structs


def _is_null(raw: msgspec.Raw) -> bool:
    return len(raw) == 4 and bytes(raw) == b"null"


def _may_hold_raw(tp: Any, seen: set[Any]) -> bool:
    if tp is msgspec.Raw:
        return True
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        if tp in seen:
            return True
        seen.add(tp)
        return bool(_raw_fields(tp)) or any(_may_hold_raw(sub, seen) for sub in tp.__subclasses__())
    origin = typing.get_origin(tp)
    if origin in (list, tuple, Union, types.UnionType, typing.Annotated):
        return any(_may_hold_raw(arg, seen) for arg in typing.get_args(tp))
    return False


_FIELDS: dict[type, tuple[str, ...]] = {}


def _raw_fields(cls: type) -> tuple[str, ...]:
    """The fields of struct type ``cls`` that can hold a Raw (directly or nested), cached."""
    fields = _FIELDS.get(cls)
    if fields is None:
        _FIELDS[cls] = ()  # recursion guard
        found = msgspec.structs.fields(cls)
        fields = tuple(f.name for f in found if _may_hold_raw(f.type, {cls}))
        _FIELDS[cls] = fields
    return fields


def _collect(value: Any, out: list[msgspec.Raw] | None = None) -> list[msgspec.Raw]:
    out = [] if out is None else out
    if isinstance(value, msgspec.Raw):
        out.append(value)
    elif isinstance(value, msgspec.Struct):
        for name in _raw_fields(type(value)):
            _collect(getattr(value, name), out)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect(item, out)
    return out


def _rebuild(value: Any, mapping: dict[int, msgspec.Raw]) -> Any:
    if isinstance(value, msgspec.Raw):
        return mapping.get(id(value), value)
    if isinstance(value, msgspec.Struct):
        changes = {}
        for name in _raw_fields(type(value)):
            old = getattr(value, name)
            new = _rebuild(old, mapping)
            if new is not old:
                changes[name] = new
        return msgspec.structs.replace(value, **changes) if changes else value
    if isinstance(value, list):
        items = [_rebuild(item, mapping) for item in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    if isinstance(value, tuple):
        items = [_rebuild(item, mapping) for item in value]
        return tuple(items) if any(a is not b for a, b in zip(items, value, strict=True)) else value
    return value


# ---------------------------------------------------------------------- one sealer per connection

_SEALERS: weakref.WeakKeyDictionary[Connection, dict[str, PayloadSealer]] = weakref.WeakKeyDictionary()


def configure(conn: Connection, names: Names, policy: PayloadPolicy) -> PayloadSealer:
    """Set how ``conn`` seals ``names``' payloads (a Worker or Client does, from its settings)."""
    sealer = PayloadSealer(conn, names, policy)
    _SEALERS.setdefault(conn, {})[names.namespace] = sealer
    return sealer


def sealer_for(conn: Connection, names: Names) -> PayloadSealer:
    """The sealer ``configure`` set for ``conn`` and ``names``, else one from ``PERDURE_*``."""
    by_namespace = _SEALERS.get(conn)
    sealer = by_namespace.get(names.namespace) if by_namespace is not None else None
    return sealer if sealer is not None else configure(conn, names, PayloadPolicy.from_env())
