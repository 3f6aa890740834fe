"""The member checkpoint format (``FORMAT_VERSION`` 1): one ``torch.save`` dict with

``format_version, model_config, feature_config (with fingerprint), labels (LabelSpace.to_dict()),
state_dict, metrics, run_id, created``.

Loading checks the feature fingerprint against this code's recipe and refuses a mismatch.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import torch

from shared_features import FeatureConfig, LabelSpace, get_preset
from shared_features.errors import FingerprintMismatchError
from training.errors import TrainingError
from training.models.config import ModelConfig
from training.models.factory import AudioClassifier, build_model

FORMAT_VERSION = 1


def save_checkpoint(
    path: Path,
    model: AudioClassifier,
    labels: LabelSpace,
    *,
    metrics: dict[str, float] | None = None,
    run_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format_version": FORMAT_VERSION,
        "model_config": model.mcfg.to_dict(),
        "feature_config": model.feature_cfg.to_dict(),
        "labels": labels.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metrics": metrics or {},
        "run_id": run_id,
        "created": dt.datetime.now(dt.UTC).isoformat(),
        **(extra or {}),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def read_meta(path: Path) -> dict[str, Any]:
    blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(blob, dict) or blob.get("format_version") != FORMAT_VERSION:
        raise TrainingError(f"{path}: not a silencio checkpoint (format {FORMAT_VERSION})")
    return blob


def load_checkpoint(
    path: Path, map_location: str = "cpu"
) -> tuple[AudioClassifier, LabelSpace, dict[str, Any]]:
    """Rebuild the member; raises :class:`FingerprintMismatchError` when its features are not the
    code's, :class:`TrainingError` for a foreign file."""
    blob = read_meta(Path(path))
    try:
        fcfg = FeatureConfig.from_dict(blob["feature_config"])
    except FingerprintMismatchError as exc:
        raise FingerprintMismatchError(f"{path}: {exc}") from exc
    labels = LabelSpace.from_dict(blob["labels"])
    mcfg = ModelConfig.from_dict(blob["model_config"])
    if fcfg.fingerprint() != get_preset(mcfg.feature_preset).fingerprint():
        raise FingerprintMismatchError(
            f"{path}: trained with features {fcfg.fingerprint()} but preset {mcfg.feature_preset!r} "
            "computes others in this code"
        )
    # the base checkpoint is already folded into the saved weights
    mcfg = mcfg.replace(base_checkpoint=None, panns_checkpoint=None)
    model = build_model(mcfg, len(labels), weights_follow=True)
    model.load_state_dict(blob["state_dict"])
    model.to(map_location)
    model.eval()
    return model, labels, blob
