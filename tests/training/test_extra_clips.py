"""Extra clips (the closed loop's judged feedback clips) join a member's training windows: labelled
clips as their species, "not an animal" clips as all-zero targets, repeated ``weight`` times — from
a feature cache (features) and from audio (waveforms) alike, and the same on Ray workers."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from training.data import DataSource, ExtraClip, ExtraClips
from training.errors import TrainingError
from training.loop import TrainConfig, select_training_data
from training.models import member_config
from training.ray_train import ray_config, worker_data

from .conftest import TINY


@pytest.fixture()
def extra(tmp_path, synth_dir):
    rec = sorted((synth_dir / "train_audio").rglob("*.ogg"))[0]
    x, sr = sf.read(rec, dtype="float32")
    sf.write(tmp_path / "bird.wav", np.tile(x, 2)[: 10 * sr], sr)  # two 5 s windows
    sf.write(tmp_path / "noise.wav", np.random.default_rng(0).normal(0, 0.01, 5 * sr).astype(np.float32), sr)
    return ExtraClips(
        "two judged clips",
        (ExtraClip(tmp_path / "bird.wav", rec.parent.name), ExtraClip(tmp_path / "noise.wav", None)),
        weight=2,
    )


@pytest.mark.parametrize("kind", ["cache", "audio"])
def test_extra_clips_join_the_training_windows(kind, synth_cache, synth_dir, extra):
    source = DataSource(cache=synth_cache) if kind == "cache" else DataSource(data_dir=synth_dir)
    mcfg, tcfg = member_config("student", **TINY["student"]), TrainConfig()
    base = select_training_data(source, mcfg, tcfg, soundscapes=False)
    data = select_training_data(source, mcfg, tcfg, soundscapes=False, extra=extra)
    n = len(base.train)
    assert len(data.train) == n + 2 * (2 + 1) and len(data.val) == len(base.val)
    y = data.train.target_matrix()
    code = extra.clips[0].label
    assert y.shape == (n + 6, len(data.labels))
    assert (y[n : n + 4, data.labels.index(code)] == 1).all() and y[n : n + 4].sum() == 4  # 2 windows × 2
    assert y[n + 4 :].sum() == 0  # "not an animal": a negative for every species
    x_base, _ = base.train[0]
    x_extra, _ = data.train[n]
    assert x_extra.shape == x_base.shape and x_extra.dtype == x_base.dtype
    # a Ray worker selects the very same windows
    ray = worker_data(ray_config(mcfg, tcfg, source, extra=extra))
    assert np.array_equal(ray.train.target_matrix(), data.train.target_matrix())


def test_extra_clips_are_checked(tmp_path, synth_dir, extra):
    bad = ExtraClips("bad", (ExtraClip(extra.clips[0].path, "nosuch"),))
    with pytest.raises(TrainingError, match="not in the label space"):
        select_training_data(
            DataSource(data_dir=synth_dir), member_config("student"), TrainConfig(), extra=bad
        )
    with pytest.raises(TrainingError, match="weight"):
        ExtraClips("w", (), weight=0)
