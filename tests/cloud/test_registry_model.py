"""The cloud loads its ensemble from the MLflow registry alias ``production`` (embedded store)."""

from __future__ import annotations

import pytest

from cloud.errors import NotReady
from cloud.inference import Identifier
from shared_features import LabelSpace
from tests.conftest import MINI, tiny_edge_package


def test_identifier_from_registry_alias(tmp_path, monkeypatch):
    from training.tracking import MLflowTracker, set_alias

    monkeypatch.setenv("SILENCIO_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    labels = LabelSpace.from_taxonomy_csv(MINI / "taxonomy.csv")
    package = tiny_edge_package(tmp_path / "pkg", labels, version="9", val_roc_auc=0.6)
    tr = MLflowTracker("silencio-ensemble-test", run_name="pkg", system_metrics=False)
    tr.log_metrics({"best_val_roc_auc": 0.6})
    tr.log_artifact(package, "model")
    version = tr.register("silencio-ensemble", "model", alias=None)
    tr.end()
    set_alias("silencio-ensemble", str(version), "production")
    ident = Identifier.load("models:/silencio-ensemble@production", tmp_path)
    assert ident.package.version == "9" and not ident.birdnet_only
    with pytest.raises(NotReady, match="not found in the MLflow registry"):
        Identifier.load("models:/silencio-ensemble@staging", tmp_path)
