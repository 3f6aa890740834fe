"""Writing model packages (the format :mod:`shared_features.package` reads and verifies).

``write_package`` copies each member's file under ``members/``, records its sha256 and size, and
writes ``package.json`` last, atomically, so a half-written directory is never a valid package.
Re-writing a package (new weights, say) replaces only ``package.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from shared_features import LabelSpace
from shared_features.package import PACKAGE_FORMAT, PACKAGE_VERSION, MemberSpec, sha256_file
from training.errors import TrainingError


def write_package(
    out: Path,
    *,
    kind: str,
    name: str,
    version: str,
    labels: LabelSpace,
    members: list[tuple[MemberSpec, Path | None]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``members``: (spec, source file or None for BirdNET). Returns the manifest."""
    out = Path(out)
    (out / "members").mkdir(parents=True, exist_ok=True)
    specs = []
    for spec, src in members:
        d = spec.to_dict()
        if src is not None:
            src = Path(src)
            if not src.is_file():
                raise TrainingError(f"member {spec.name}: {src} does not exist")
            dest = out / "members" / f"{spec.name}{''.join(src.suffixes)}"
            if src.resolve() != dest.resolve():
                shutil.copyfile(src, dest)
            d.update(file=str(dest.relative_to(out)), sha256=sha256_file(dest), bytes=dest.stat().st_size)
        specs.append(d)
    manifest: dict[str, Any] = {
        "format": PACKAGE_FORMAT,
        "package_version": PACKAGE_VERSION,
        "kind": kind,
        "name": name,
        "version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "feature_preset": "default",
        "labels": labels.to_dict(),
        "labels_sha256": labels.digest(),
        "members": specs,
        **(extra or {}),
    }
    tmp = out / "package.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / "package.json")
    return manifest


def update_manifest(out: Path, **changes: Any) -> dict[str, Any]:
    """Rewrite ``package.json`` with top-level ``changes`` (and ``member_weights``: name → weight)."""
    path = Path(out) / "package.json"
    manifest: dict[str, Any] = json.loads(path.read_text())
    weights = changes.pop("member_weights", None)
    if weights:
        for m in manifest["members"]:
            m["weight"] = float(weights[m["name"]])
    manifest.update(changes)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, path)
    return manifest
