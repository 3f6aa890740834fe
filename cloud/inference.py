"""Ensemble inference for the cloud: which model is loaded, and audio → per-window species.

The model is an ``ensemble`` (or any) model package (:mod:`shared_features.package`), from a local
directory or an MLflow registry URI (``models:/silencio-ensemble@production``). With no trained
ensemble the service runs **BirdNET v2.4 alone** (zero-shot, the birds it knows) and says so in
every answer (``model.birdnet_only``). Scoring is injectable (``score``) so the BentoML service can
route it through its adaptive-batching API.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloud.errors import BadRequest, NotReady, PayloadTooLarge, Unprocessable, UnsupportedMediaType
from shared_features import DEFAULT, LabelSpace, frame_windows, load_audio
from shared_features.errors import (
    AudioDecodeError,
    AudioError,
    AudioTooLongError,
    FingerprintMismatchError,
    LabelError,
    UnsupportedFormatError,
)
from shared_features.labels import taxonomy_path
from shared_features.package import PACKAGE_FORMAT, PACKAGE_VERSION, ModelPackage, PackageError, load_package

log = logging.getLogger(__name__)

#: Longest upload ``identify`` (and a clip upload) decodes (seconds of audio): refused from the
#: header when it says so, else as soon as decoding passes it (``shared_features.audio``).
MAX_IDENTIFY_SECONDS = 10 * 60.0
#: Highest sample rate and most channels an upload may have: with 10 minutes, at most
#: 57.6 M samples (230 MB of float32) are decoded for one request, whatever the file's size.
MAX_UPLOAD_SAMPLE_RATE = 96_000
MAX_UPLOAD_CHANNELS = 8


def birdnet_only_package(root: Path, taxonomy: Path) -> Path:
    """Write a package whose only member is BirdNET zero-shot over ``taxonomy`` (again only when it
    changed). The manifest is replaced atomically: the service's processes (API worker, Scorer)
    write it at the same start, and a process killed while writing must not leave a half-written
    ``package.json`` that refuses every later start (tests/reliability/test_cloud_kills.py)."""
    from shared_features.birdnet import known_species

    labels = LabelSpace.from_taxonomy_csv(taxonomy)
    root.mkdir(parents=True, exist_ok=True)
    known = known_species(labels)
    manifest = {
        "format": PACKAGE_FORMAT,
        "package_version": PACKAGE_VERSION,
        "kind": "ensemble",
        "name": "birdnet-only",
        "version": "birdnet-v2.4",
        "feature_preset": "default",
        "labels": labels.to_dict(),
        "labels_sha256": labels.digest(),
        "members": [
            {
                "name": "birdnet",
                "runtime": "birdnet",
                "known": [c for c, k in zip(labels.codes, known) if k],
                "weight": 1.0,
            }
        ],
        "note": "no trained ensemble: BirdNET v2.4 zero-shot only (birds it knows; "
        "no frogs, insects, mammals)",
    }
    text = json.dumps(manifest, indent=2)
    target = root / "package.json"
    try:
        if target.read_text() == text:
            return root
    except (OSError, UnicodeDecodeError):
        pass  # missing or unreadable: written below
    tmp = root / f".package.json.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return root


def resolve_model(model: str | None, home: Path, taxonomy: Path | None) -> tuple[Path, bool]:
    """(package directory, birdnet_only). ``model``: a package directory, a ``models:/`` URI, or
    None for the BirdNET-only fallback."""
    if model:
        if model.startswith("models:/"):
            try:
                import mlflow
            except ImportError:
                raise NotReady(
                    f"{model}: loading from the MLflow registry needs mlflow (pip install 'silencio[train]')"
                ) from None

            uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
            mlflow.set_tracking_uri(uri)  # the same embedded default as training's
            try:
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model))
            except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; all mean "not loadable"
                raise NotReady(f"{model}: not found in the MLflow registry at {uri} ({exc})") from None
            return local, False
        p = Path(model)
        if not (p / "package.json").exists():
            raise NotReady(f"{model}: not a model package directory (no package.json)")
        return p, False
    try:
        tax = taxonomy_path(taxonomy)
    except LabelError as exc:
        raise NotReady(str(exc)) from None
    return birdnet_only_package(home / "packages" / "birdnet-only", tax), True


def _audio_message(exc: Exception, data: bytes | Path) -> str:
    """An audio error as the client may read it: no server path or temporary file name, no Python
    object representation (the decoders name the file or buffer they were given)."""
    msg = str(exc)
    if isinstance(data, Path):
        msg = msg.replace(str(data), data.name)
    msg = re.sub(r"Error opening <[^>]*>: ", "", msg)
    msg = re.sub(r"<_io\.\w+ object at 0x[0-9a-fA-F]+>", "the upload", msg)
    msg = re.sub(r"(?<![\w.])/(?:[\w.-]+/)+", "", msg)  # any other absolute path: its file name only
    return msg.replace("<bytes>: ", "").strip()


def species_entry(labels: LabelSpace, idx: int, p: float) -> dict[str, Any]:
    s = labels[idx]
    return {
        "code": s.code,
        "scientific_name": s.scientific_name,
        "common_name": s.common_name,
        "taxon_class": s.taxon_class,
        "probability": round(float(p), 4),
    }


@dataclass
class Identifier:
    package: ModelPackage
    birdnet_only: bool = False
    score: Callable[[np.ndarray], np.ndarray] | None = None  # [n, samples] → [n, C]; default: package

    @classmethod
    def load(
        cls, model: str | None, home: Path, taxonomy: Path | None = None, threads: int = 2
    ) -> Identifier:
        path, bn_only = resolve_model(model, home, taxonomy)
        try:
            pkg = load_package(path, threads=threads)
        except (PackageError, FingerprintMismatchError) as exc:
            raise NotReady(f"model package {path} refused: {exc}") from exc
        if pkg.feature_fingerprint != DEFAULT.fingerprint():
            raise NotReady(
                f"{path}: features {pkg.feature_fingerprint} ≠ this code's {DEFAULT.fingerprint()}"
            )
        log.info("cloud model: %s%s", pkg.describe(), " (BirdNET only)" if bn_only else "")
        return cls(pkg, bn_only)

    @property
    def labels(self) -> LabelSpace:
        return self.package.labels

    def model_info(self) -> dict[str, Any]:
        pkg = self.package
        return {
            "name": pkg.name,
            "version": pkg.version,
            "feature_fingerprint": pkg.feature_fingerprint,
            "members": [m.name for m in pkg.members],
            "birdnet_only": self.birdnet_only,
            **(
                {"note": "no trained ensemble: BirdNET v2.4 zero-shot only (no frogs, insects or mammals)"}
                if self.birdnet_only
                else {}
            ),
        }

    def scores(self, windows: np.ndarray, members: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self.score is not None and not members:
            return self.score(windows), {}
        s = self.package.predict(windows, members=members)  # without members: only what probs need
        return s.probs, s.members

    def decode(self, data: bytes | Path, name: str = "upload") -> np.ndarray:
        """Audio bytes / file → ``[n] float32`` at 32 kHz, with the cloud's error codes: not audio,
        or a sample rate / channel count over the upload limits 415; longer than
        :data:`MAX_IDENTIFY_SECONDS` (by its header or while decoding) 413; corrupt, empty, too
        short, NaN samples 400."""
        try:
            return load_audio(
                data,
                DEFAULT,
                max_duration=MAX_IDENTIFY_SECONDS,
                max_sample_rate=MAX_UPLOAD_SAMPLE_RATE,
                max_channels=MAX_UPLOAD_CHANNELS,
            )
        except UnsupportedFormatError as exc:
            raise UnsupportedMediaType(f"{name}: {_audio_message(exc, data)}") from None
        except AudioTooLongError as exc:
            raise PayloadTooLarge(f"{name}: {_audio_message(exc, data)}") from None
        except (AudioDecodeError, AudioError) as exc:
            raise BadRequest(f"{name}: {_audio_message(exc, data)}") from None

    def identify(
        self,
        data: bytes | Path,
        *,
        threshold: float = 0.5,
        top_k: int = 5,
        stride: float | None = None,
        members: bool = False,
        name: str = "upload",
    ) -> dict[str, Any]:
        if not 0 <= threshold <= 1:
            raise Unprocessable(f"threshold: must be in [0, 1], got {threshold}")
        if not 1 <= top_k <= 50:
            raise Unprocessable(f"top_k: must be in [1, 50], got {top_k}")
        if stride is not None and not 0.5 <= stride <= DEFAULT.window_seconds:
            raise Unprocessable(f"stride: must be in [0.5, {DEFAULT.window_seconds:g}] s, got {stride}")
        audio = self.decode(data, name)
        cfg = DEFAULT if stride is None else DEFAULT.replace(window_stride_seconds=float(stride))
        windows, times = frame_windows(audio, cfg)
        probs, per_member = self.scores(windows, members)
        labels = self.labels
        out_windows = []
        for i, t in enumerate(times):
            order = np.argsort(-probs[i])[:top_k]
            sp = [species_entry(labels, int(j), probs[i, j]) for j in order if probs[i, j] >= threshold]
            w: dict[str, Any] = {"start": round(t.start, 3), "end": round(t.end, 3), "species": sp}
            if members:
                w["members"] = {
                    m: [species_entry(labels, int(j), v[i, j]) for j in np.argsort(-v[i])[:top_k]]
                    for m, v in per_member.items()
                }
            out_windows.append(w)
        clip = probs.max(axis=0)
        order = np.argsort(-clip)[:top_k]
        return {
            "model": self.model_info(),
            "duration": round(audio.size / cfg.sample_rate, 3),
            "window_seconds": cfg.window_seconds,
            "stride_seconds": cfg.window_stride_seconds,
            "threshold": threshold,
            "windows": out_windows,
            "summary": {
                "species": [species_entry(labels, int(j), clip[j]) for j in order if clip[j] >= threshold],
                "top": [species_entry(labels, int(j), clip[j]) for j in order],
                "windows": len(times),
            },
        }
