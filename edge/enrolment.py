"""Enrolment: the device learns its cloud, its token and the cloud's release public key once
(``silencio edge enroll``) and keeps them in ``$SILENCIO_HOME/edge/enrolment.json`` (mode 0600: it
holds the token). :class:`edge.settings.EdgeSettings` reads the file below flags and environment
variables (``SILENCIO_EDGE_CLOUD_URL``, ``_TOKEN``, ``_RELEASE_KEY``).

The pinned release key is the device's root of trust for model updates (:mod:`edge.release`):
without one, every release is refused. After a release signed by a rotated key was installed (the
pinned key signed the rotation), :func:`pin_release_key` replaces the pinned key in the file.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from edge.errors import EdgeError
from edge.release import verify_announcement
from shared_features.signature import SignatureError, key_id, normalize_public_key

log = logging.getLogger(__name__)

FILE_NAME = "enrolment.json"
#: the settings an enrolment provides (EdgeSettings field names)
FIELDS = ("cloud_url", "token", "release_key")


def enrolment_path(home: Path) -> Path:
    return Path(home) / "edge" / FILE_NAME


def read_enrolment(home: Path) -> dict[str, Any]:
    """The enrolment file's settings ({} when the device is not enrolled)."""
    path = enrolment_path(home)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise EdgeError(f"{path} cannot be read ({exc}): enrol again (silencio edge enroll)") from None
    if not isinstance(data, dict):
        raise EdgeError(f"{path} is not an enrolment file: enrol again (silencio edge enroll)")
    return {k: data[k] for k in FIELDS if isinstance(data.get(k), str) and data[k]}


def _write(home: Path, data: dict[str, Any]) -> Path:
    path = enrolment_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{FILE_NAME}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)
        json.dump(data, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def parse_release_key(value: str) -> str:
    """A public key given as its text (``ed25519:…``) or as the path of a file holding it (the
    cloud's ``release.pub``); its canonical text. :class:`EdgeError` when it is not a key."""
    text = value.strip()
    if not text.startswith("ed25519:") and Path(text).expanduser().is_file():
        text = Path(text).expanduser().read_text().strip()
    try:
        return normalize_public_key(text)
    except SignatureError as exc:
        raise EdgeError(f"--release-key: {exc}") from None


@dataclass(frozen=True)
class EnrolResult:
    path: Path
    cloud_url: str
    key_id: str
    #: what the cloud's current release looks like to this device (None when not checked)
    release: str | None


def enroll(
    home: Path,
    cloud_url: str,
    token: str,
    release_key: str,
    *,
    check: bool = True,
    transport: httpx.BaseTransport | None = None,
    timeout: float = 10.0,
) -> EnrolResult:
    """Check (unless ``check`` is false) that the cloud accepts the token and whether its current
    release verifies with the key, then write the enrolment file. A refused token or an unreachable
    cloud is an :class:`EdgeError` and nothing is written."""
    key = parse_release_key(release_key)
    url = cloud_url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise EdgeError(f"--cloud: expected an http(s):// URL, got {cloud_url!r}")
    if not token.strip():
        raise EdgeError("--token: empty")
    release = None
    if check:
        release = _check_cloud(url, token.strip(), key, transport, timeout)
    path = _write(
        home,
        {
            "cloud_url": url,
            "token": token.strip(),
            "release_key": key,
            "release_key_id": key_id(key),
            "enrolled_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    return EnrolResult(path, url, key_id(key), release)


def _check_cloud(
    url: str, token: str, key: str, transport: httpx.BaseTransport | None, timeout: float
) -> str:
    try:
        with httpx.Client(base_url=url, timeout=timeout, transport=transport) as http:
            r = http.get("/v1/releases/current", headers={"authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise EdgeError(
            f"cannot reach the cloud at {url} ({type(exc).__name__}: {exc}); check the URL, or enrol "
            "without checking: --offline"
        ) from None
    if r.status_code in (401, 403):
        raise EdgeError(f"the cloud at {url} refused this token (HTTP {r.status_code}): nothing was written")
    if r.status_code == 404:
        return "no release published yet"
    if r.status_code != 200:
        raise EdgeError(f"the cloud at {url} answered HTTP {r.status_code}: nothing was written")
    try:
        v = verify_announcement(r.json(), key)
    except EdgeError as exc:
        return f"the current release would be refused: {exc}"
    return f"current release {v.statement.version} is signed by key {v.signer_id}: it verifies"


def pin_release_key(home: Path, new_key: str) -> Path | None:
    """Replace the pinned release key in the enrolment file (after a verified rotation); None when
    the device has no enrolment file (its key comes from the environment: update it there)."""
    path = enrolment_path(home)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("release key rotated to %s but %s cannot be updated", key_id(new_key), path)
        return None
    data["release_key"] = normalize_public_key(new_key)
    data["release_key_id"] = key_id(new_key)
    return _write(home, data)
