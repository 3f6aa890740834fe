"""The commands over the pipeline, chained as a user runs them on the synthetic dataset with tiny
models: train fit → train ensemble → train distill → export edge (no MLflow, no BirdNET)."""

from __future__ import annotations

import json

import pytest

from silencio.cli import main


@pytest.mark.slow
def test_fit_ensemble_distill_export_chain(tmp_path, synth_dir, capsys):
    d = str(synth_dir)
    common = ["--no-mlflow", "--epochs", "1"]
    assert main(["train", "fit", "resnet50", "--data", d, "--timm-name", "resnet10t", "--downsample", "4",
                 "--batch-size", "16", "--out", str(tmp_path / "m"), *common]) == 0  # fmt: skip
    assert main(["train", "ensemble", "--data", d, "--member", str(tmp_path / "m" / "model.pt"), "--no-birdnet",
                 "--no-mlflow", "--out", str(tmp_path / "ens")]) == 0  # fmt: skip
    assert main(["train", "distill", "--data", d, "--teacher", str(tmp_path / "ens"), "--timm-name",
                 "mobilenetv3_small_050", "--downsample", "2", "--out", str(tmp_path / "s"), *common]) == 0  # fmt: skip
    student = str(tmp_path / "s" / "round1" / "model.pt")  # re-train from it (the loop's --init-from)
    assert main(["train", "distill", "--data", d, "--teacher", str(tmp_path / "ens"), "--init-from", student,
                 "--out", str(tmp_path / "s2"), *common]) == 0  # fmt: skip
    assert json.loads((tmp_path / "s2" / "step.json").read_text())["config"]["init_from"] == student
    assert main(["export", "edge", str(tmp_path / "s" / "round1" / "model.pt"), "--data", d, "--formats",
                 "onnx-fp32", "--no-mlflow", "--out", str(tmp_path / "x"), "--version", "5"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "resnet50: best validation macro ROC-AUC" in out and "ensemble package" in out
    assert "round 1: best validation macro ROC-AUC" in out and "onnx-fp32:" in out
    for step, where in [("train_member", "m"), ("build_ensemble_package", "ens"), ("distill_student", "s"),
                        ("export_edge_packages", "x")]:  # fmt: skip
        rec = json.loads((tmp_path / where / "step.json").read_text())
        assert rec["step"] == step and (tmp_path / where / "result.json").exists()
    man = json.loads((tmp_path / "x" / "onnx-fp32" / "package.json").read_text())
    assert man["kind"] == "edge" and man["version"] == "5"
