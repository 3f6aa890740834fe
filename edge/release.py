"""What the device checks before it installs a release from the cloud.

1. **The announcement's signature** (:func:`verify_announcement`), before anything is downloaded:
   the release statement rebuilt from ``GET /v1/releases/current`` (name, version, the archive's
   sha256 and size, feature fingerprint, label digest, thresholds digest, signing time, key id)
   must carry an Ed25519 signature by the key pinned at enrolment, or by a key reached from it
   through key rotations the pinned key signed (:mod:`shared_features.signature`). No pinned key,
   no signature, another key, or any changed field: refused.
2. **The download** (:func:`download`) is written to a file, never held in memory, and refused as
   soon as it grows past the signed size; its sha256 must be the signed one.
3. **Safe extraction** (:func:`safe_extract`), only of an archive whose sha256 was signed: every
   member header is checked before anything is written — plain files and folders only (no
   symbolic or hard links, devices, FIFOs, sparse or contiguous files), relative names inside the
   destination (no absolute path, no ``..``), no duplicate names, at most
   :attr:`ExtractLimits.max_members` members, each at most ``max_member_bytes``, together at most
   ``max_total_bytes`` — then files are written with ``O_EXCL | O_NOFOLLOW`` and their sizes
   checked while they are copied.

Every refusal raises :class:`edge.errors.UpdateError` naming the release and the reason; the
installed model is never touched by a refused release (see :mod:`edge.updater`).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from edge.errors import UpdateError
from shared_features.signature import (
    KeyRotation,
    ReleaseStatement,
    SignatureError,
    key_id,
    verify_release,
)

ENROL_HINT = "silencio edge enroll --cloud URL --token TOKEN --release-key KEY"


@dataclass(frozen=True)
class VerifiedRelease:
    """A release announcement whose signature verified: its statement, and the public key that
    signed it (the pinned key, or a newer one reached through signed rotations)."""

    statement: ReleaseStatement
    signer: str
    rotated: bool  # signed by a newer key than the pinned one

    @property
    def signer_id(self) -> str:
        return key_id(self.signer)


def verify_announcement(info: Mapping[str, Any], pinned_key: str | None) -> VerifiedRelease:
    """Check ``GET /v1/releases/current``'s answer against the pinned release key."""
    version = info.get("version", "?")
    if not pinned_key:
        raise UpdateError(
            f"release {version} refused: no release key is pinned on this device, so no release can be "
            f"trusted; pin the cloud's public key with: {ENROL_HINT} (or SILENCIO_EDGE_RELEASE_KEY)"
        )
    if not info.get("signature") or not info.get("key_id"):
        raise UpdateError(f"release {version} refused: it is not signed")
    try:
        statement = ReleaseStatement.from_dict(info)
        rotations = [KeyRotation.from_dict(r) for r in info.get("key_rotations") or []]
        signer = verify_release(statement, str(info["signature"]), pinned_key, rotations)
    except SignatureError as exc:
        raise UpdateError(f"release {version} refused: {exc}") from None
    return VerifiedRelease(statement, signer, key_id(signer) != key_id(pinned_key))


def download(client: Any, url: str, dest: Path, statement: ReleaseStatement) -> None:
    """Stream the archive to ``dest``: refused when larger than the signed size (as soon as it is),
    shorter, or with another sha256. ``client``: an :class:`edge.sync.SyncClient`."""
    import httpx

    h = hashlib.sha256()
    size = 0
    try:
        with client.http.stream("GET", url) as r:
            if r.status_code != 200:
                r.read()
                raise UpdateError(f"release {statement.version}: download answered HTTP {r.status_code}")
            with open(dest, "wb") as fh:
                for chunk in r.iter_bytes(1 << 20):
                    size += len(chunk)
                    if size > statement.bytes:
                        raise UpdateError(
                            f"release {statement.version} refused: the download exceeds the signed "
                            f"{statement.bytes} bytes"
                        )
                    h.update(chunk)
                    fh.write(chunk)
    except httpx.HTTPError as exc:
        raise UpdateError(
            f"release {statement.version}: download failed ({type(exc).__name__}: {exc})"
        ) from None
    if size != statement.bytes:
        raise UpdateError(
            f"release {statement.version} refused: downloaded {size} bytes, signed size {statement.bytes}"
        )
    if h.hexdigest() != statement.sha256:
        raise UpdateError(
            f"release {statement.version} refused: download sha256 {h.hexdigest()[:12]}… ≠ signed "
            f"{statement.sha256[:12]}…"
        )


# ---------------------------------------------------------------------------------- safe extraction
@dataclass(frozen=True)
class ExtractLimits:
    """What a release archive may hold. An edge package is a few MB (an int8 student ~2 MB)."""

    max_members: int = 1_000
    max_member_bytes: int = 256 * 1024 * 1024
    max_total_bytes: int = 512 * 1024 * 1024
    max_depth: int = 16
    max_name_bytes: int = 1024


_KINDS = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


def _member_path(m: tarfile.TarInfo, limits: ExtractLimits) -> PurePosixPath:
    name = m.name
    if not name or "\x00" in name or len(name.encode("utf-8", "surrogateescape")) > limits.max_name_bytes:
        raise UpdateError(f"release archive refused: member name {name[:80]!r} is empty or too long")
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith(("/", "\\")):
        raise UpdateError(f"release archive refused: member {name!r} has an absolute path")
    parts = [x for x in p.parts if x not in (".", "")]
    if ".." in parts:
        raise UpdateError(f"release archive refused: member {name!r} leaves the destination (..)")
    if not parts:
        raise UpdateError(f"release archive refused: member {name!r} names the destination itself")
    if len(parts) > limits.max_depth:
        raise UpdateError(
            f"release archive refused: member {name!r} is nested deeper than {limits.max_depth}"
        )
    return PurePosixPath(*parts)


def check_members(tar: tarfile.TarFile, limits: ExtractLimits) -> list[tuple[tarfile.TarInfo, PurePosixPath]]:
    """Every member header, checked (see the module docstring) before anything is written."""
    out: list[tuple[tarfile.TarInfo, PurePosixPath]] = []
    seen: set[PurePosixPath] = set()
    total = 0
    while True:
        try:
            m = tar.next()
        except tarfile.TarError as exc:
            raise UpdateError(f"release archive refused: unreadable tar header ({exc})") from None
        if m is None:
            break
        if len(out) >= limits.max_members:
            raise UpdateError(f"release archive refused: more than {limits.max_members} members")
        path = _member_path(m, limits)
        if m.type in _KINDS:
            raise UpdateError(f"release archive refused: member {m.name!r} is {_KINDS[m.type]}")
        if not (m.type in (tarfile.REGTYPE, tarfile.AREGTYPE) or m.isdir()):
            raise UpdateError(f"release archive refused: member {m.name!r} is not a plain file or folder")
        if path in seen:
            raise UpdateError(f"release archive refused: member {m.name!r} appears twice")
        seen.add(path)
        if m.isreg():
            if m.size > limits.max_member_bytes:
                raise UpdateError(
                    f"release archive refused: member {m.name!r} has {m.size} bytes "
                    f"(limit {limits.max_member_bytes})"
                )
            total += m.size
            if total > limits.max_total_bytes:
                raise UpdateError(
                    f"release archive refused: its members hold more than {limits.max_total_bytes} bytes"
                )
        out.append((m, path))
    files = {p for m, p in out if m.isreg()}
    for m, p in out:  # a file may not also be a folder of another member
        if any(parent in files for parent in p.parents):
            raise UpdateError(f"release archive refused: member {m.name!r} lies inside a file")
    return out


def safe_extract(tar_path: Path, dest: Path, limits: ExtractLimits | None = None) -> list[str]:
    """Extract an uncompressed tar archive into the empty folder ``dest``; returns the member paths.
    Raises :class:`UpdateError` (nothing is written when a header is refused)."""
    limits = limits or ExtractLimits()
    dest = Path(dest)
    try:
        tar = tarfile.open(tar_path, mode="r:")
    except (tarfile.TarError, OSError) as exc:
        raise UpdateError(f"release archive refused: not an uncompressed tar archive ({exc})") from None
    with tar:
        members = check_members(tar, limits)
        root = dest.resolve()
        for m, rel in members:
            target = root.joinpath(*rel.parts)
            try:
                if m.isdir():
                    target.mkdir(mode=0o755, parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                if not target.parent.resolve().is_relative_to(root):  # pragma: no cover - no links exist
                    raise UpdateError(f"release archive refused: member {m.name!r} leaves the destination")
                _copy_member(tar, m, target)
            except (OSError, tarfile.TarError) as exc:
                raise UpdateError(f"release archive: cannot extract member {m.name!r} ({exc})") from None
    return [str(p) for _, p in members]


def _copy_member(tar: tarfile.TarFile, m: tarfile.TarInfo, target: Path) -> None:
    src = tar.extractfile(m)
    if src is None:  # pragma: no cover - only regular files reach here
        raise UpdateError(f"release archive refused: member {m.name!r} has no data")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    written = 0
    with os.fdopen(fd, "wb") as out:
        while True:
            block = src.read(min(1 << 20, m.size - written + 1))
            if not block:
                break
            written += len(block)
            if written > m.size:
                raise UpdateError(
                    f"release archive refused: member {m.name!r} holds more than its header says"
                )
            out.write(block)
    if written != m.size:
        raise UpdateError(
            f"release archive refused: member {m.name!r} is truncated ({written} of {m.size} bytes)"
        )
    if not stat.S_ISREG(os.stat(target, follow_symlinks=False).st_mode):  # pragma: no cover
        raise UpdateError(f"release archive refused: {m.name!r} did not become a plain file")
