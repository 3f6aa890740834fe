"""Edge releases: what the cloud publishes and a device installs.

A release is a directory ``<name>-<version>/`` and the same content as an uncompressed tar archive
beside it (``<name>-<version>.tar``, members under ``package/`` … exactly as the directory):

    package/            the edge model package (docs/contracts.md §5), unchanged
    thresholds.json     per-species detection thresholds: {"species_code": threshold, …};
                        species not listed use the manifest's default_threshold
    release.json        the manifest (below)

``release.json`` is plain JSON (UTF-8, sorted keys, two-space indent):

    format            "silencio-edge-release"
    release_version   RELEASE_VERSION (1)
    name, version     the release's name and version (the package's, unless given)
    created           UTC, ISO 8601
    labels_sha256     the label space's digest (LabelSpace.digest(); equal to the package's)
    n_species         size of the label space
    feature_fingerprint
    default_threshold
    model             {name, version, format_name, run_id, metrics} of the package
    files             {"relative/path": {"sha256", "bytes"}} for every file of the release
                      except release.json itself (package/…, thresholds.json)
    thresholds        {"n_species": k, "fit": {…}} — how they were fitted, when known
    gate              the promotion decision (GateDecision.to_dict()), when one was made
    source_runs       MLflow run ids that produced it (step → run id)
    loop_report       (optional) the closed loop's report.md, relative to $SILENCIO_HOME or absolute

The cloud signs a release when it publishes it (docs/contracts.md §11): its signed statement names
the archive's sha256 and ``thresholds.json``'s sha256, so the manifest is never rewritten to be
signed. Devices that only know model packages read ``package/`` and ignore the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared_features.package import load_package, sha256_file
from training.errors import TrainingError

RELEASE_FORMAT = "silencio-edge-release"
RELEASE_VERSION = 1


class ReleaseError(TrainingError):
    """A release that cannot be made (not an edge package, unknown species, gate refused)."""


@dataclass(frozen=True)
class ReleaseFiles:
    directory: Path
    archive: Path
    archive_sha256: str
    manifest: Mapping[str, Any]


def write_release(
    package: Path,
    out_root: Path,
    *,
    thresholds: Mapping[str, float],
    default_threshold: float = 0.5,
    name: str | None = None,
    version: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ReleaseFiles:
    """Write ``out_root/<name>-<version>/`` and its ``.tar``; refuses a package that is not an
    edge package, thresholds outside [0, 1] or naming species outside its label space."""
    pkg = load_package(package)
    if pkg.kind != "edge":
        raise ReleaseError(f"{package}: a release needs an edge package, not {pkg.kind}")
    bad = sorted(c for c in thresholds if c not in pkg.labels)
    if bad:
        raise ReleaseError(f"thresholds name species outside the package's label space: {bad[:5]}")
    if any(not 0.0 <= float(v) <= 1.0 for v in (*thresholds.values(), default_threshold)):
        raise ReleaseError("thresholds must lie in [0, 1]")
    name = name or pkg.name
    version = version or pkg.version
    out_root = Path(out_root)
    dest = out_root / f"{name}-{version}"
    tmp = out_root / f".{name}-{version}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    shutil.copytree(package, tmp / "package")
    (tmp / "thresholds.json").write_text(
        json.dumps({c: float(v) for c, v in sorted(thresholds.items())}, indent=2, sort_keys=True)
    )
    files = {
        str(p.relative_to(tmp)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(tmp.rglob("*"))
        if p.is_file()
    }
    man = pkg.manifest
    manifest: dict[str, Any] = {
        "format": RELEASE_FORMAT,
        "release_version": RELEASE_VERSION,
        "name": name,
        "version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "labels_sha256": pkg.labels.digest(),
        "n_species": len(pkg.labels),
        "feature_fingerprint": pkg.feature_fingerprint,
        "default_threshold": float(default_threshold),
        "model": {
            "name": pkg.name,
            "version": pkg.version,
            "format_name": man.get("format_name"),
            "run_id": man.get("run_id"),
            "metrics": man.get("metrics", {}),
        },
        "files": files,
        **dict(extra or {}),
    }
    (tmp / "release.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    archive = out_root / f"{name}-{version}.tar"
    part = archive.with_suffix(".tar.partial")
    with tarfile.open(part, "w") as tar:
        for p in sorted(dest.rglob("*")):
            tar.add(p, arcname=str(p.relative_to(dest)), recursive=False)
    os.replace(part, archive)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    return ReleaseFiles(dest, archive, digest, manifest)


def read_release(directory: Path) -> dict[str, Any]:
    """A release directory's manifest, every listed file checked against its sha256."""
    directory = Path(directory)
    try:
        manifest: dict[str, Any] = json.loads((directory / "release.json").read_text())
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"{directory}: no readable release.json ({exc})") from None
    if manifest.get("format") != RELEASE_FORMAT or manifest.get("release_version") != RELEASE_VERSION:
        raise ReleaseError(f"{directory}: not a {RELEASE_FORMAT} v{RELEASE_VERSION}")
    for rel, info in manifest["files"].items():
        p = directory / rel
        if not p.is_file() or sha256_file(p) != info["sha256"]:
            raise ReleaseError(f"{directory}: {rel} is missing or does not match its sha256")
    return manifest
