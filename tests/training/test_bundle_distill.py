"""The ensemble bundle and the distilled student, end to end on the small synthetic dataset with
tiny members (real ONNX Runtime, real training loop; figures are not meaningful at this size)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from shared_features import LabelSpace
from shared_features.ensemble import combine
from shared_features.package import load_package
from training.bundle import build_ensemble, windows_of
from training.data import from_audio
from training.distill import DistillConfig, PseudoConfig, distill, select_pseudo
from training.loop import TrainConfig
from training.models import build_model, member_config, save_checkpoint

from .conftest import TINY


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, synth_dir):
    tmp = tmp_path_factory.mktemp("ens")
    labels = LabelSpace.from_taxonomy_csv(synth_dir / "taxonomy.csv")
    ckpts = []
    for name in ("resnet50", "cnn14_sed"):
        torch.manual_seed(len(ckpts))
        m = build_model(member_config(name, **TINY[name]), len(labels)).eval()
        ckpts.append(save_checkpoint(tmp / f"{name}.pt", m, labels, metrics={"best_val_roc_auc": 0.5}))
    res = build_ensemble(synth_dir, tmp / "pkg", checkpoints=ckpts, birdnet=True, trials=20, threads=1)
    return res


def test_bundle_is_a_verified_package_with_fitted_weights(ensemble, synth_dir):
    pkg = load_package(ensemble.package)
    assert pkg.kind == "ensemble" and [m.name for m in pkg.members] == ["resnet50", "cnn14_sed"]
    # BirdNET knows none of the synthetic species: it is left out rather than weighted
    assert abs(sum(pkg.weights) - 1) < 1e-6 and all(w >= 0 for w in pkg.weights)
    man = json.loads((ensemble.package / "package.json").read_text())
    assert man["weights_fit"]["windows"] > 0 and "soundscape" in man
    assert (ensemble.package / "report" / "report.md").exists()
    data = from_audio(synth_dir, pkg.feature_cfg, soundscapes=False)
    xv, _ = windows_of(data.val)
    s = pkg.predict(xv[:5])
    assert s.probs.shape == (5, 8)
    again = combine([s.members[n] for n in ("resnet50", "cnn14_sed")], [s.known["resnet50"]] * 2, pkg.weights)
    np.testing.assert_allclose(s.probs, again, atol=1e-6)


def test_pseudo_selection_keeps_confident_windows():
    scores = np.array([[0.9, 0.1], [0.3, 0.2], [0.01, 0.02], [0.04, 0.6]], np.float32)
    assert select_pseudo(scores, PseudoConfig(0.5, 0.05)).tolist() == [0, 2, 3]
    with pytest.raises(Exception, match="threshold"):
        PseudoConfig(0.1, 0.5)


def test_distill_two_rounds_with_pseudo_labels(ensemble, synth_dir, tmp_path):
    res = distill(
        synth_dir,
        ensemble.package,
        tmp_path / "student",
        mcfg=member_config("student", **TINY["student"]),
        tcfg=TrainConfig(epochs=1, batch_size=16),
        dcfg=DistillConfig(alpha=0.5, pseudo=PseudoConfig(0.2, 0.15, rounds=2)),
        progress=False,
    )
    assert len(res["rounds"]) == 2
    r1, r2 = res["rounds"]
    assert r1["unlabelled_windows"] == 12 and 0 <= r1["pseudo_windows"] <= 12
    assert "pseudo_precision" in r1 or r1["pseudo_windows"] == 0
    assert r2["soundscape"]["macro_roc_auc"] > 0
    assert (tmp_path / "student" / "round2" / "model.pt").exists()
    # the teacher's scores were cached: a second call would not re-score
    assert len(list((tmp_path / "student" / "teacher_cache").glob("*.npy"))) == 2
