"""Ray Train for real: one epoch of a tiny member on a local Ray cluster with 2 CPU workers (DDP)."""

from __future__ import annotations

import pytest

from training.loop import TrainConfig
from training.models import load_checkpoint, member_config

from .conftest import TINY


@pytest.mark.slow
def test_two_worker_ddp_epoch(tmp_path, synth_cache):
    ray = pytest.importorskip("ray")
    from training.data import DataSource
    from training.ray_train import fit_ray

    try:
        res = fit_ray(
            member_config("resnet50", **TINY["resnet50"]),
            TrainConfig(epochs=2, batch_size=16),
            DataSource(cache=synth_cache),
            tmp_path / "ray",
            workers=2,
            max_failures=1,
        )
        assert ray.is_initialized()
        nodes = ray.nodes()
        assert len(nodes) == 1 and nodes[0]["Alive"]
    finally:
        ray.shutdown()
    assert res.best_epoch in (1, 2) and [int(h["epoch"]) for h in res.history] == [1, 2]
    model, labels, blob = load_checkpoint(res.checkpoint)
    assert blob["metrics"]["best_val_roc_auc"] == res.best_val_roc_auc
    assert res.soundscape is not None
