"""Safe model updates: check the cloud's current edge release, download it, verify its sha256, its
package (every file's sha256, format version, label space) and its feature fingerprint against this
code, shadow-evaluate it against the installed model on recently stored clips (top-1 agreement),
then switch atomically (one transaction flips ``active``/``previous``). ``rollback`` flips back.
A failed check leaves the installed model in place.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import UpdateError
from edge.store import Store
from shared_features import DEFAULT, frame_windows, load_audio
from shared_features.errors import SilencioFeatureError

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
    store: Store, tar_path: Path, sha256: str, model_dir: Path, current: Any | None
) -> dict[str, Any]:
    """Verify and install a downloaded release archive; returns what happened."""
    from edge.detector import PackageScorer

    digest = hashlib.sha256(Path(tar_path).read_bytes()).hexdigest()
    if digest != sha256:
        raise UpdateError(f"download sha256 {digest[:12]}… ≠ announced {sha256[:12]}…: not installed")
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=".staging-"))
    try:
        with tarfile.open(tar_path) as tar:
            tar.extractall(staging, filter="data")
        pkg_dir = staging / "package"
        try:
            scorer = PackageScorer(pkg_dir)
        except SilencioFeatureError as exc:
            raise UpdateError(f"release refused: {exc}") from None
        if scorer.package.feature_fingerprint != DEFAULT.fingerprint():
            raise UpdateError(
                f"release features {scorer.package.feature_fingerprint} ≠ {DEFAULT.fingerprint()}"
            )
        if current is not None and current.labels != scorer.labels:
            log.warning("the new model has another label space than the installed one")
        shadow = shadow_evaluate(scorer, current, store) if current is not None else None
        version = scorer.package.version
        dest = model_dir / f"{scorer.package.name}-{version}"
        if dest.exists():
            shutil.rmtree(dest)
        pkg_dir.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    store.install_model(version, str(dest), sha256, DEFAULT.fingerprint(), shadow)
    store.activate_model(version)
    return {"version": version, "path": str(dest), "shadow": shadow}


def check_and_update(client: Any, store: Store, model_dir: Path, current: Any | None) -> dict[str, Any]:
    """``client``: a :class:`edge.sync.SyncClient` (its HTTP session and retries)."""
    r = client.request("GET", "/v1/releases/current")
    if r.status_code == 404:
        return {"updated": False, "reason": "no release published"}
    if r.status_code != 200:
        raise UpdateError(f"release check: HTTP {r.status_code} {r.text[:200]}")
    info = r.json()
    active = store.active_model()
    if active is not None and active.sha256 == info["sha256"]:
        return {"updated": False, "reason": f"version {info['version']} already installed"}
    if info["feature_fingerprint"] != DEFAULT.fingerprint():
        raise UpdateError(f"release {info['version']} was built for features {info['feature_fingerprint']}")
    with tempfile.TemporaryDirectory() as tmp:
        dl = client.request("GET", "/v1/releases/current/download")
        if dl.status_code != 200:
            raise UpdateError(f"download: HTTP {dl.status_code}")
        path = Path(tmp) / "release.tar"
        path.write_bytes(dl.content)
        res = install(store, path, info["sha256"], model_dir, current)
    return {"updated": True, **res}


def rollback(store: Store) -> dict[str, Any]:
    prev = store.previous_model()
    if prev is None:
        raise UpdateError("no previous model to roll back to")
    cur = store.active_model()
    store.activate_model(prev.version)
    return {"active": prev.version, "was": cur.version if cur else None}
