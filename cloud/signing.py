"""The cloud's release signing key: an Ed25519 key pair under ``$SILENCIO_HOME/cloud/keys/``.

Files (the folder is 0700):

* ``release.key`` — the private key (PKCS#8 PEM, mode 0600; never printed, never logged); refused
  when other users may read it;
* ``release.pub`` — the public key as text (``ed25519:<base64>``), what devices pin at enrolment;
* ``rotations.json`` — every key rotation so far (:class:`shared_features.signature.KeyRotation`:
  the new public key, signed by the key before it), published with each release so that devices
  that pinned an older key can follow the chain;
* ``retired/<key id>.key`` — private keys replaced by a rotation (0600; destroy them once every
  device has installed a release signed by the new key).

:func:`sign_release` signs a :class:`shared_features.signature.ReleaseStatement`; what it covers and
how devices verify it is in :mod:`shared_features.signature`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.errors import SigningError
from shared_features.signature import KeyRotation, ReleaseStatement, key_id, public_key_text

log = logging.getLogger(__name__)

KEY_FILE = "release.key"
PUBLIC_FILE = "release.pub"
ROTATIONS_FILE = "rotations.json"
RETIRED_DIR = "retired"


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    public_key: str  # ed25519:<base64>
    key_id: str
    path: Path  # the private key's file

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.private.sign(data)).decode("ascii")


def keys_dir(home: Path) -> Path:
    return Path(home) / "cloud" / "keys"


def _public_text(private: Ed25519PrivateKey) -> str:
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return public_key_text(raw)


def _write_private(path: Path, private: Ed25519PrivateKey) -> None:
    """Write a private key readable by its owner only (0600 whatever the umask), never over a file."""
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _make_dir(home: Path) -> Path:
    d = keys_dir(home)
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    return d


def load_key(home: Path) -> SigningKey | None:
    """The current signing key, or None when there is none yet."""
    path = keys_dir(home) / KEY_FILE
    if not path.exists():
        return None
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningError(
            f"release signing key {path} may be read by other users (mode {stat.filemode(mode)}): "
            f"chmod 600 {path}"
        )
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningError(f"release signing key {path} cannot be read: {exc}") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningError(f"{path} is not an Ed25519 private key")
    public = _public_text(private)
    return SigningKey(private, public, key_id(public), path)


def generate_key(home: Path) -> SigningKey:
    """A new key pair (:class:`SigningError` when one exists: rotate it instead)."""
    existing = load_key(home)
    if existing is not None:
        raise SigningError(
            f"a release signing key exists already (key id {existing.key_id}, {existing.path}); "
            "replace it with: silencio cloud keygen --rotate"
        )
    d = _make_dir(home)
    private = Ed25519PrivateKey.generate()
    _write_private(d / KEY_FILE, private)
    public = _public_text(private)
    _write_text(d / PUBLIC_FILE, public + "\n")
    log.info("created release signing key %s in %s", key_id(public), d)
    return SigningKey(private, public, key_id(public), d / KEY_FILE)


def ensure_key(home: Path) -> tuple[SigningKey, bool]:
    """The signing key, created first when there is none; ``(key, created)``."""
    key = load_key(home)
    if key is not None:
        return key, False
    return generate_key(home), True


def rotations(home: Path) -> list[KeyRotation]:
    path = keys_dir(home) / ROTATIONS_FILE
    if not path.exists():
        return []
    try:
        return [KeyRotation.from_dict(r) for r in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError) as exc:
        raise SigningError(f"{path} cannot be read: {exc}") from None


def rotate_key(home: Path) -> tuple[SigningKey, KeyRotation]:
    """Replace the signing key: the old key signs the new public key (a :class:`KeyRotation`
    appended to ``rotations.json``), then retires to ``retired/<key id>.key``."""
    old = load_key(home)
    if old is None:
        raise SigningError(f"no release signing key in {keys_dir(home)} to rotate: silencio cloud keygen")
    d = _make_dir(home)
    private = Ed25519PrivateKey.generate()
    public = _public_text(private)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    unsigned = KeyRotation(old.key_id, key_id(public), public, created, "")
    rotation = KeyRotation(old.key_id, key_id(public), public, created, old.sign(unsigned.payload()))
    staged = d / f".{KEY_FILE}.new"
    staged.unlink(missing_ok=True)
    _write_private(staged, private)
    _write_text(d / ROTATIONS_FILE, json.dumps([r.to_dict() for r in [*rotations(home), rotation]], indent=2))
    retired = d / RETIRED_DIR
    retired.mkdir(exist_ok=True)
    retired.chmod(0o700)
    os.replace(old.path, retired / f"{old.key_id}.key")
    os.replace(staged, d / KEY_FILE)
    _write_text(d / PUBLIC_FILE, public + "\n")
    log.info("rotated the release signing key: %s → %s", old.key_id, key_id(public))
    return SigningKey(private, public, key_id(public), d / KEY_FILE), rotation


def sign_release(key: SigningKey, statement: ReleaseStatement) -> str:
    """The base64 Ed25519 signature of a statement (which must name this key)."""
    if statement.key_id != key.key_id:
        raise SigningError(f"statement names key {statement.key_id}, signing with {key.key_id}")
    return key.sign(statement.canonical())
