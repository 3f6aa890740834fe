"""Signed edge releases: what a release's signature covers, Ed25519 public keys as text, and key
rotations. One definition for the side that signs (the cloud: ``cloud/signing.py``) and the side
that verifies (the device: ``edge/release.py``), so the signed bytes can never drift apart.

* A **public key** travels as text, ``ed25519:<base64 of the 32 raw bytes>``; its **key id** is the
  first 16 hex digits of the sha256 of those bytes (what messages and the API name).
* The signature covers a :class:`ReleaseStatement` — the archive's sha256 and size, the release's
  name and version, the feature fingerprint, the label space's digest, the sha256 of its
  thresholds file (``None`` without one), when it was signed and by which key — serialised by
  :func:`canonical_json` (sorted keys, no spaces, ASCII). The archive's sha256 pins every byte of
  the package, so nothing in the archive can change without the signature failing; the other
  fields let a device refuse a release *before* downloading or unpacking it.
* A **key rotation** (:class:`KeyRotation`) is a statement "the key after me is K", signed by the
  old key. A device that pinned the old key accepts a release signed by K only through an unbroken
  chain of such statements starting at its pinned key (:func:`verify_release`).

Signature format version :data:`SIGNATURE_VERSION` (docs/contracts.md, "Signed releases").
"""

from __future__ import annotations

import base64
import binascii
import builtins
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from shared_features.errors import SilencioFeatureError

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError as exc:  # pragma: no cover - the edge and cloud extras install it
    raise ImportError(
        f"release signatures need the 'cryptography' package ({exc}); "
        "install it with: pip install 'silencio[edge]' (or 'silencio[cloud]')"
    ) from exc

SIGNATURE_VERSION = 1
STATEMENT_FORMAT = "silencio-release-statement"
ROTATION_FORMAT = "silencio-key-rotation"
KEY_PREFIX = "ed25519:"
ALGORITHM = "ed25519"


class SignatureError(SilencioFeatureError):
    """A release (or key) that must not be trusted: unsigned, a signature that does not verify, a
    key that is not the pinned one and not reached from it by signed rotations, a malformed key."""


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """The exact bytes that are signed: JSON with sorted keys, no spaces, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


# ---------------------------------------------------------------------------------- keys
def public_key_text(raw: bytes) -> str:
    """``ed25519:<base64>`` for the 32 raw bytes of a public key."""
    if len(raw) != 32:
        raise SignatureError(f"an Ed25519 public key has 32 bytes, got {len(raw)}")
    return KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def _raw(text: str) -> bytes:
    t = text.strip()
    if not t.startswith(KEY_PREFIX):
        raise SignatureError(f"not a release public key: expected '{KEY_PREFIX}<base64>', got {t[:40]!r}")
    try:
        raw = base64.b64decode(t[len(KEY_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"release public key {t[:40]!r}…: not valid base64") from None
    if len(raw) != 32:
        raise SignatureError(f"release public key {t[:40]!r}…: {len(raw)} bytes, an Ed25519 key has 32")
    return raw


def parse_public_key(text: str) -> Ed25519PublicKey:
    """An ``ed25519:<base64>`` text as a key (:class:`SignatureError` when malformed)."""
    return Ed25519PublicKey.from_public_bytes(_raw(text))


def normalize_public_key(text: str) -> str:
    """The canonical text of a public key (checks it)."""
    return public_key_text(_raw(text))


def key_id(public_key: str) -> str:
    """The key id: 16 hex digits of the sha256 of the raw public key."""
    return hashlib.sha256(_raw(public_key)).hexdigest()[:16]


def _check(public_key: str, signature: str, data: bytes, what: str) -> None:
    try:
        sig = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise SignatureError(f"{what}: the signature is not valid base64") from None
    try:
        parse_public_key(public_key).verify(sig, data)
    except InvalidSignature:
        raise SignatureError(
            f"{what}: the signature does not verify with key {key_id(public_key)} "
            "(the release or its announcement was changed, or another key signed it)"
        ) from None


# ---------------------------------------------------------------------------------- statements
def _text(d: Mapping[str, Any], key: str, optional: bool = False) -> Any:
    v = d.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str) or not v:
        raise SignatureError(f"signed release statement: {key!r} missing or not text")
    return v


@dataclass(frozen=True)
class ReleaseStatement:
    """What a release's signature covers (see the module docstring)."""

    name: str | None
    version: str
    sha256: str  # of the release archive (the bytes a device downloads)
    bytes: int  # its size
    feature_fingerprint: str
    labels_sha256: str  # LabelSpace.digest() of the package's label space
    thresholds_sha256: str | None  # sha256 of thresholds.json in the archive, None without one
    signed_at: str  # UTC, ISO 8601
    key_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"format": STATEMENT_FORMAT, "signature_version": SIGNATURE_VERSION, **asdict(self)}

    def canonical(self) -> builtins.bytes:  # the field ``bytes`` hides the builtin in the class
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReleaseStatement:
        """From a stored statement or an announcement's fields (extra keys are ignored)."""
        size = d.get("bytes")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise SignatureError(f"signed release statement: 'bytes' must be a size, got {size!r}")
        return cls(
            name=_text(d, "name", optional=True),
            version=_text(d, "version"),
            sha256=_text(d, "sha256"),
            bytes=size,
            feature_fingerprint=_text(d, "feature_fingerprint"),
            labels_sha256=_text(d, "labels_sha256"),
            thresholds_sha256=_text(d, "thresholds_sha256", optional=True),
            signed_at=_text(d, "signed_at"),
            key_id=_text(d, "key_id"),
        )


@dataclass(frozen=True)
class KeyRotation:
    """ "The key after ``old_key_id`` is ``new_public_key``", signed by the old key."""

    old_key_id: str
    new_key_id: str
    new_public_key: str
    created_at: str
    signature: str  # base64, by the old key over payload()

    def payload(self) -> bytes:
        return canonical_json(
            {
                "format": ROTATION_FORMAT,
                "signature_version": SIGNATURE_VERSION,
                "old_key_id": self.old_key_id,
                "new_key_id": self.new_key_id,
                "new_public_key": self.new_public_key,
                "created_at": self.created_at,
            }
        )

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KeyRotation:
        return cls(
            **{
                k: _text(d, k)
                for k in ("old_key_id", "new_key_id", "new_public_key", "created_at", "signature")
            }
        )


def signing_key_path(pinned_key: str, target_key_id: str, rotations: Sequence[KeyRotation]) -> list[str]:
    """The public keys from the pinned one to the one with ``target_key_id``, each reached by a
    rotation the previous one signed. :class:`SignatureError` when there is no such chain."""
    key = normalize_public_key(pinned_key)
    path = [key]
    for _ in range(len(rotations) + 1):
        if key_id(key) == target_key_id:
            return path
        step = next((r for r in rotations if r.old_key_id == key_id(key)), None)
        if step is None:
            break
        _check(key, step.signature, step.payload(), f"key rotation {step.old_key_id} → {step.new_key_id}")
        if key_id(step.new_public_key) != step.new_key_id:
            raise SignatureError(
                f"key rotation to {step.new_key_id}: the new key has id {key_id(step.new_public_key)}"
            )
        key = normalize_public_key(step.new_public_key)
        path.append(key)
    raise SignatureError(
        f"the release is signed by key {target_key_id}, this device trusts key {key_id(pinned_key)} "
        "and no rotation signed by it leads there: if the cloud's key was replaced without a rotation, "
        "enrol the device again with the new key (silencio edge enroll --release-key KEY)"
    )


def verify_release(
    statement: ReleaseStatement,
    signature: str | None,
    pinned_key: str | None,
    rotations: Sequence[KeyRotation] = (),
) -> str:
    """Check a release statement's signature against the pinned key (directly, or through signed
    key rotations); returns the public key that signed it. Raises :class:`SignatureError`."""
    if not pinned_key:
        raise SignatureError(
            "no release key is pinned on this device: every release is refused until one is "
            "(silencio edge enroll --cloud URL --token TOKEN --release-key KEY, or SILENCIO_EDGE_RELEASE_KEY)"
        )
    if not signature:
        raise SignatureError(f"release {statement.version} is not signed")
    path = signing_key_path(pinned_key, statement.key_id, rotations)
    _check(path[-1], signature, statement.canonical(), f"release {statement.version}")
    return path[-1]
