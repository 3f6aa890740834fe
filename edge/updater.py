"""Safe model updates: check the cloud's current edge release and its Ed25519 signature against
the key pinned at enrolment (before downloading anything), download it within its signed size,
verify its signed sha256 (before unpacking), extract it safely, verify its package (every file's
sha256, format version, label space) and its feature fingerprint against this code and the signed
statement, shadow-evaluate it against the installed model on recently stored clips (top-1
agreement), then switch atomically (one transaction flips ``active``/``previous``). ``rollback``
flips back. A failed check leaves the installed model in place. See :mod:`edge.release`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import UpdateError
from edge.release import ExtractLimits, download, safe_extract, verify_announcement
from edge.store import Store
from shared_features import DEFAULT, frame_windows, load_audio
from shared_features.errors import SilencioFeatureError
from shared_features.package import sha256_file
from shared_features.signature import ReleaseStatement

log = logging.getLogger(__name__)


def shadow_evaluate(new: Any, old: Any, store: Store, max_clips: int = 50) -> dict[str, Any]:
    """Top-1 agreement of two scorers on the most recent stored clips (windows of 5 s)."""
    clips = store.recent_clip_paths(max_clips)
    agree = total = 0
    for path in clips:
        try:
            wins, _ = frame_windows(load_audio(path))
        except (OSError, SilencioFeatureError):
            continue
        for w in wins:
            from shared_features import log_mel

            f = log_mel(w[None], DEFAULT)[0]
            a = new.score(w, f if new.needs_features else None)
            b = old.score(w, f if old.needs_features else None)
            agree += int(np.argmax(a) == np.argmax(b))
            total += 1
    return {"windows": total, "top1_agreement": agree / total if total else None, "clips": len(clips)}


def install(
    store: Store,
    tar_path: Path,
    statement: ReleaseStatement,
    model_dir: Path,
    current: Any | None,
    limits: ExtractLimits | None = None,
) -> dict[str, Any]:
    """Verify and install a downloaded release archive whose ``statement`` was verified
    (:func:`edge.release.verify_announcement`); returns what happened. The archive is checked
    against the signed sha256, extracted safely into a staging folder, its content checked against
    the statement (feature fingerprint, label digest, thresholds digest), shadow-evaluated, and only
    then moved to a folder of its own and activated. Any refusal leaves the installed model as it
    was (its folder, its row, the active flag)."""
    from edge.detector import PackageScorer

    digest = sha256_file(Path(tar_path))
    if digest != statement.sha256:
        raise UpdateError(
            f"release {statement.version}: archive sha256 {digest[:12]}… ≠ signed {statement.sha256[:12]}…: "
            "not installed"
        )
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=".staging-"))
    try:
        safe_extract(tar_path, staging, limits)
        pkg_dir = staging / "package"
        try:
            scorer = PackageScorer(pkg_dir)
        except SilencioFeatureError as exc:
            raise UpdateError(f"release refused: {exc}") from None
        _check_content(staging, scorer, statement)
        if current is not None and current.labels != scorer.labels:
            log.warning("the new model has another label space than the installed one")
        shadow = shadow_evaluate(scorer, current, store) if current is not None else None
        version = statement.version
        dest = model_dir / f"{scorer.package.name}-{version}-{digest[:12]}"  # never the active folder
        if dest.exists():
            shutil.rmtree(dest)
        pkg_dir.rename(dest)
        thresholds = staging / "thresholds.json"
        if thresholds.is_file():
            thresholds.rename(dest / "thresholds.json")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    store.install_model(version, str(dest), digest, DEFAULT.fingerprint(), shadow)
    store.activate_model(version)
    return {"version": version, "path": str(dest), "shadow": shadow}


def _check_content(root: Path, scorer: Any, statement: ReleaseStatement) -> None:
    """The unpacked release says what its signed statement says."""
    fp = scorer.package.feature_fingerprint
    if fp != DEFAULT.fingerprint():
        raise UpdateError(f"release features {fp} ≠ {DEFAULT.fingerprint()}")
    if fp != statement.feature_fingerprint:
        raise UpdateError(
            f"release package has features {fp}, its signature says {statement.feature_fingerprint}"
        )
    if scorer.labels.digest() != statement.labels_sha256:
        raise UpdateError("release package's label space is not the one its signature names")
    thresholds = root / "thresholds.json"
    got = sha256_file(thresholds) if thresholds.is_file() else None
    if got != statement.thresholds_sha256:
        raise UpdateError("release thresholds.json is not the one its signature names")


def check_and_update(
    client: Any,
    store: Store,
    model_dir: Path,
    current: Any | None,
    *,
    release_key: str | None,
    on_key_rotated: Callable[[str], None] | None = None,
    limits: ExtractLimits | None = None,
) -> dict[str, Any]:
    """Install the cloud's current release if it is new and trusted. ``client``: a
    :class:`edge.sync.SyncClient` (its HTTP session and retries); ``release_key``: the public key
    pinned at enrolment (``EdgeSettings.release_key``) — without one every release is refused. The
    announcement's signature is checked before the archive is downloaded, the archive's sha256
    before it is unpacked. ``on_key_rotated(new_key)`` is called after a release signed by a newer
    key (reached through rotations the pinned key signed) was installed: pin the new key."""
    r = client.request("GET", "/v1/releases/current")
    if r.status_code == 404:
        return {"updated": False, "reason": "no release published"}
    if r.status_code != 200:
        raise UpdateError(f"release check: HTTP {r.status_code} {r.text[:200]}")
    verified = verify_announcement(r.json(), release_key)
    st = verified.statement
    active = store.active_model()
    if active is not None and active.sha256 == st.sha256:
        return {"updated": False, "reason": f"version {st.version} already installed"}
    if st.feature_fingerprint != DEFAULT.fingerprint():
        raise UpdateError(f"release {st.version} was built for features {st.feature_fingerprint}")
    with tempfile.TemporaryDirectory(dir=_tmp_parent(model_dir)) as tmp:
        path = Path(tmp) / "release.tar"
        download(client, "/v1/releases/current/download", path, st)
        res = install(store, path, st, model_dir, current, limits)
    if verified.rotated:
        log.info("release %s is signed by the rotated key %s: pinning it", st.version, verified.signer_id)
        if on_key_rotated is not None:
            on_key_rotated(verified.signer)
    return {"updated": True, **res, "key_id": verified.signer_id, "key_rotated": verified.rotated}


def _tmp_parent(model_dir: Path) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    return model_dir


def rollback(store: Store) -> dict[str, Any]:
    prev = store.previous_model()
    if prev is None:
        raise UpdateError("no previous model to roll back to")
    cur = store.active_model()
    store.activate_model(prev.version)
    return {"active": prev.version, "was": cur.version if cur else None}
