"""The cloud loads its ensemble from the MLflow registry alias ``production`` (embedded store)."""

from __future__ import annotations

import pytest
import torch

from cloud.errors import NotReady
from cloud.inference import Identifier
from shared_features import LabelSpace
from tests.conftest import MINI


def test_identifier_from_registry_alias(tmp_path, monkeypatch):
    from training.export import PublishThresholds, export_edge
    from training.models import build_model, member_config, save_checkpoint
    from training.tracking import MLflowTracker, set_alias

    monkeypatch.setenv("SILENCIO_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    labels = LabelSpace.from_taxonomy_csv(MINI / "taxonomy.csv")
    torch.manual_seed(0)
    m = build_model(
        member_config("student", timm_name="mobilenetv3_small_050", input_downsample=2), 206
    ).eval()
    ckpt = save_checkpoint(tmp_path / "s.pt", m, labels, metrics={"best_val_roc_auc": 0.6})
    feats = torch.randn(4, 128, 316).numpy()
    export_edge(
        ckpt,
        tmp_path / "pkg",
        parity=feats[:1],
        calibration=feats,
        check=feats,
        check_targets=None,
        formats=("onnx-fp32",),
        thresholds=PublishThresholds(0, 1),
        version="9",
    )
    tr = MLflowTracker("silencio-ensemble-test", run_name="pkg", system_metrics=False)
    tr.log_metrics({"best_val_roc_auc": 0.6})
    tr.log_artifact(tmp_path / "pkg" / "onnx-fp32", "model")
    version = tr.register("silencio-ensemble", "model", alias=None)
    tr.end()
    set_alias("silencio-ensemble", str(version), "production")
    ident = Identifier.load("models:/silencio-ensemble@production", tmp_path)
    assert ident.package.version == "9" and not ident.birdnet_only
    with pytest.raises(NotReady, match="not found in the MLflow registry"):
        Identifier.load("models:/silencio-ensemble@staging", tmp_path)
