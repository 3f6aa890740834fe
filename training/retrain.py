"""Re-training on the time-ordered "new" data: old vs new model on both parts, so drift and
forgetting are visible."""

from __future__ import annotations

from pathlib import Path

import torch

from training.data import from_cache
from training.loop import TrainConfig, validate
from training.models.checkpoint import load_checkpoint


def retrain_comparison(old: Path, new: Path, cache: Path, seed: int = 0) -> dict[str, float]:
    """Validation macro ROC-AUC of both models on the validation windows of the "initial" and the
    "new" part of the time-ordered split."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out: dict[str, float] = {}
    parts = {s: from_cache(cache, seed=seed, subset=s) for s in ("initial", "new")}
    for tag, path in (("old", old), ("new", new)):
        model, _, _ = load_checkpoint(path, map_location=str(dev))
        for s, data in parts.items():
            out[f"{tag}_model_on_{s}_val_roc_auc"] = validate(model, data.val, dev, TrainConfig())[
                "val_roc_auc"
            ]
    out["forgetting_initial"] = (
        out["old_model_on_initial_val_roc_auc"] - out["new_model_on_initial_val_roc_auc"]
    )
    out["gain_new"] = out["new_model_on_new_val_roc_auc"] - out["old_model_on_new_val_roc_auc"]
    return out
