"""`silencio train …` end to end on the embedded MLflow store (SQLite under $SILENCIO_HOME)."""

from __future__ import annotations

import json

from silencio.cli import main


def test_fit_register_list(tmp_path, synth_cache, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model:\n  timm_name: resnet10t\n  input_downsample: 4\ntrain:\n  batch_size: 16\n")
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "fit",
            "resnet50",
            "--cache",
            str(synth_cache),
            "--config",
            str(cfg),
            "--epochs",
            "1",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "best validation macro ROC-AUC" in text and "held-out soundscapes" in text
    run_id = text.split("MLflow run ")[1].split()[0]
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["model.timm_name"] == "resnet10t" and resolved["train.batch_size"] == 16
    assert main(["train", "register", run_id, "--alias", "staging"]) == 0
    assert main(["train", "list"]) == 0
    listing = capsys.readouterr().out
    assert "silencio-resnet50 v1" in listing and "@staging" in listing
    import os

    assert f"sqlite:///{os.environ['SILENCIO_HOME']}/mlflow/mlflow.db" in listing


def test_bad_config_is_a_clean_error(tmp_path, synth_cache, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("optimizer: sgd\n")
    rc = main(["train", "fit", "resnet50", "--cache", str(synth_cache), "--config", str(cfg), "--no-mlflow"])
    assert rc == 2 and "model:" in capsys.readouterr().err
    assert main(["train", "fit", "vgg", "--cache", str(synth_cache), "--no-mlflow"]) == 2
