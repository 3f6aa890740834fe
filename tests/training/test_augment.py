from __future__ import annotations

import torch

from training.augment import WaveAugConfig, augment_waveforms, coloured_noise
from training.loop import mixup


def test_coloured_noise_is_unit_rms_and_coloured():
    g = torch.Generator().manual_seed(0)
    x = coloured_noise((8, 32_000), g, torch.device("cpu"))
    assert torch.allclose(x.pow(2).mean(dim=1), torch.ones(8), atol=1e-3)


def test_empty_windows_get_empty_targets_and_crops_keep_labels():
    g = torch.Generator().manual_seed(1)
    x = torch.sin(torch.linspace(0, 3000, 160_000)).repeat(64, 1) * 0.3
    y = torch.zeros(64, 5)
    y[:, 2] = 1
    cfg = WaveAugConfig(noise_prob=0.0, crop_prob=0.5, empty_prob=0.25)
    xa, ya = augment_waveforms(x, y, cfg, g)
    empty = ya.sum(dim=1) == 0
    assert 5 <= int(empty.sum()) <= 30
    assert torch.all(ya[~empty, 2] == 1)
    changed = (xa != x).any(dim=1)
    assert changed[empty].all() and changed.sum() > empty.sum()
    assert torch.isfinite(xa).all()


def test_waveforms_are_added_and_labels_united():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 1000)
    y = torch.eye(4)
    xm, ym = mixup(x, y, 0.4, g)
    assert torch.all(ym.sum(dim=1) >= 1) and ym.max() == 1
    assert xm.shape == x.shape
