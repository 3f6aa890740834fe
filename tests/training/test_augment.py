from __future__ import annotations

import torch

from training.augment import WaveAugConfig, augment_waveforms, coloured_noise
from training.loop import mix_waveforms, mixup


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


def test_waveforms_are_added_per_example_and_labels_united():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 1000)
    y = torch.eye(64)
    xm, ym = mix_waveforms(x, y, 0.5, g)
    mixed = ym.sum(dim=1) == 2
    solo = ym.sum(dim=1) == 1
    assert torch.all(mixed | solo) and 15 <= int(mixed.sum()) <= 49  # per example, not per batch
    assert torch.equal(xm[solo], x[solo]) and not torch.equal(xm[mixed], x[mixed])
    for i in torch.where(mixed)[0]:
        j = int(torch.where(ym[i] * (1 - y[i]))[0][0])  # the partner it received
        residual = xm[i] - x[i]
        gain_db = 20 * torch.log10(residual.pow(2).mean().sqrt() / x[i].pow(2).mean().sqrt())
        assert torch.allclose(residual / residual.norm(), x[j] / x[j].norm(), atol=1e-4)
        assert -12.01 <= float(gain_db) <= 6.01


def test_feature_mixup_unites_labels():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 8, 10)
    y = torch.eye(4)
    xm, ym = mixup(x, y, 0.4, g)
    assert torch.all(ym.sum(dim=1) >= 1) and ym.max() == 1
    assert xm.shape == x.shape
