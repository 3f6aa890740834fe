"""The training loop on the synthetic cache with tiny members: it learns, checkpoints, resumes,
stops early, and evaluates on the held-out soundscapes."""

from __future__ import annotations

import pytest

from training.data import from_audio, from_cache
from training.errors import TrainingError
from training.loop import TrainConfig, fit
from training.models import member_config
from training.tracking import NullTracker

from .conftest import TINY


@pytest.fixture(scope="module")
def data(synth_cache):
    return from_cache(synth_cache)


def test_split_has_train_and_val(data):
    assert len(data.train) > len(data.val) > 0
    assert data.soundscapes is not None and data.soundscapes.features.shape[0] == 24


@pytest.mark.parametrize("member", sorted(TINY))
def test_one_epoch_each_member(tmp_path, data, member):
    tracker = NullTracker()
    res = fit(
        member_config(member, **TINY[member]),
        TrainConfig(epochs=1, batch_size=16),
        data,
        tmp_path / member,
        tracker=tracker,
        progress=False,
    )
    assert res.checkpoint.exists() and res.best_epoch == 1
    assert 0.0 <= res.best_val_roc_auc <= 1.0
    assert res.soundscape is not None and (tmp_path / member / "report" / "report.md").exists()
    assert tracker.params["feature_fingerprint"].startswith("fv1-")
    assert any("val_roc_auc" in m for _, m in tracker.metrics)


@pytest.fixture(scope="module")
def learn_data(tmp_path_factory):
    from training.etl import prepare_cache
    from training.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("learn")
    generate(
        root / "ds",
        SynthConfig(species=4, clips_per_species=12, clip_seconds=(5.0, 9.0), soundscapes=1, seed=7),
    )
    prepare_cache(root / "ds", root / "cache")
    return from_cache(root / "cache")


def test_the_loop_learns(tmp_path, learn_data):
    """Mechanics, not generalisation: after a few epochs the member fits its training windows
    (the generalisation figures come from the acceptance runs on held-out soundscapes)."""
    import torch

    from training.loop import predict
    from training.metrics import birdclef_roc_auc
    from training.models import load_checkpoint

    res = fit(
        member_config("resnet50", **TINY["resnet50"]),
        TrainConfig(epochs=8, batch_size=16, lr=3e-3, patience=10, mixup_prob=0.0, specaugment=False),
        learn_data,
        tmp_path / "r",
        progress=False,
    )
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < losses[0]
    model, _, _ = load_checkpoint(res.checkpoint)
    p = predict(model, learn_data.train, torch.device("cpu"))
    assert birdclef_roc_auc(learn_data.train.target_matrix() >= 0.999, p) > 0.85
    assert res.best_val_roc_auc > 0.7


def test_resume_and_time_budget(tmp_path, data):
    out = tmp_path / "run"
    cfg = member_config("resnet50", **TINY["resnet50"])
    first = fit(cfg, TrainConfig(epochs=1, batch_size=16), data, out, progress=False)
    again = fit(cfg, TrainConfig(epochs=2, batch_size=16), data, out, resume=True, progress=False)
    assert [h["epoch"] for h in again.history] == [1, 2]
    assert again.history[0] == first.history[0]
    budget = fit(
        cfg, TrainConfig(epochs=50, batch_size=16, max_minutes=0.0), data, tmp_path / "b", progress=False
    )
    assert len(budget.history) == 1 and "time budget" in budget.stopped


def test_focal_loss_and_head_only(tmp_path, data):
    res = fit(
        member_config("cnn14_sed", **TINY["cnn14_sed"]),
        TrainConfig(epochs=1, batch_size=16, loss="focal", trainable="head"),
        data,
        tmp_path / "s",
        progress=False,
    )
    assert res.checkpoint.exists()


def test_wrong_preset_for_data_is_refused(tmp_path, data):
    with pytest.raises(TrainingError, match="preset"):
        fit(
            member_config("cnn14_sed", feature_preset="panns", **TINY["cnn14_sed"]),
            TrainConfig(epochs=1),
            data,
            tmp_path / "x",
            progress=False,
        )


def test_straight_from_audio(tmp_path, synth_dir):
    from shared_features import DEFAULT

    data = from_audio(synth_dir, DEFAULT)
    x, y = data.train[0]
    assert x.shape == (DEFAULT.window_samples,) and y.sum() >= 1
    res = fit(
        member_config("resnet50", **TINY["resnet50"]),
        TrainConfig(epochs=1, batch_size=16),
        data,
        tmp_path / "a",
        progress=False,
    )
    assert res.soundscape is not None


@pytest.mark.parametrize("member", sorted(TINY))
def test_one_epoch_on_the_real_mini_dataset(tmp_path_factory, mini, member):
    """Real BirdCLEF clips (mixed formats and rates), one epoch, every member (tiny variants)."""
    from training.etl import prepare_cache

    cache = tmp_path_factory.getbasetemp() / "mini_cache"
    if not (cache / "manifest.json").exists():
        prepare_cache(mini, cache, workers=1)
    data = from_cache(cache)
    assert len(data.labels) == 206 and data.soundscapes is None  # real soundscapes are unlabelled
    res = fit(
        member_config(member, **TINY[member]),
        TrainConfig(epochs=1, batch_size=8),
        data,
        tmp_path_factory.mktemp(member),
        progress=False,
    )
    assert res.checkpoint.exists() and res.history[0]["train_loss"] > 0


def test_retraining_on_new_data_reports_old_vs_new(tmp_path, synth_cache):
    from training.retrain import retrain_comparison

    cfg = member_config("resnet50", **TINY["resnet50"])
    old = fit(
        cfg,
        TrainConfig(epochs=1, batch_size=16),
        from_cache(synth_cache, subset="initial"),
        tmp_path / "old",
        progress=False,
    )
    new = fit(
        cfg,
        TrainConfig(epochs=1, batch_size=16),
        from_cache(synth_cache, subset="new"),
        tmp_path / "new",
        init_from=old.checkpoint,
        progress=False,
    )
    cmp = retrain_comparison(old.checkpoint, new.checkpoint, synth_cache)
    assert set(cmp) >= {
        "old_model_on_initial_val_roc_auc",
        "new_model_on_new_val_roc_auc",
        "forgetting_initial",
        "gain_new",
    }
