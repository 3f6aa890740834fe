from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from shared_features import DEFAULT, LabelSpace, features_from_audio, load_audio
from training.export import ExportError, export_onnx, sha256_file
from training.models import build_model, load_checkpoint, member_config, save_checkpoint

from .conftest import TINY


@pytest.mark.parametrize("member", ["resnet50", "cnn14_sed"])
def test_onnx_export_carries_contracts_and_matches_torch(tmp_path, mini, member):
    labels = LabelSpace.from_taxonomy_csv(mini / "taxonomy.csv")
    model = build_model(member_config(member, **TINY[member]), len(labels)).eval()
    ckpt = save_checkpoint(
        tmp_path / "m.pt", model, labels, run_id="run123", metrics={"best_val_roc_auc": 0.9}
    )
    feats, _ = features_from_audio(load_audio(mini / "train_soundscapes" / "H02_20230420_074000.ogg"))
    man = export_onnx(ckpt, tmp_path / "pkg", feats[:4])
    path = tmp_path / "pkg" / "model.onnx"
    assert man["sha256"] == sha256_file(path) and man["parity"]["max_abs_diff_vs_torch"] <= 1e-4
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["feature_fingerprint"] == DEFAULT.fingerprint()
    assert LabelSpace.from_json(meta["labels"]) == labels and meta["run_id"] == "run123"
    assert json.loads((tmp_path / "pkg" / "package.json").read_text())["n_species"] == 206
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs = sess.run(None, {"features": feats})[0]  # any batch size
    m2, _, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        ref = torch.sigmoid(m2(torch.from_numpy(feats))).numpy()
    assert probs.shape == (12, 206) and np.abs(probs - ref).max() <= 1e-4


def test_parity_failure_refuses_export(tmp_path, mini):
    labels = LabelSpace.from_taxonomy_csv(mini / "taxonomy.csv")
    ckpt = save_checkpoint(
        tmp_path / "m.pt", build_model(member_config("resnet50", **TINY["resnet50"]), 206), labels
    )
    with pytest.raises(ExportError, match="disagree"):
        export_onnx(ckpt, tmp_path / "pkg", tolerance=0.0 - 1.0)
    assert not (tmp_path / "pkg" / "model.onnx").exists()
