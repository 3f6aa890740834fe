"""Ray Train for real: two epochs of a tiny member on a local Ray cluster with 2 CPU workers (DDP),
through the pipeline's ``train_member`` (the step a local run uses), continuing from a checkpoint
(``--init-from``) that every worker loads."""

from __future__ import annotations

import pytest
import torch

from shared_features import LabelSpace
from training.loop import TrainConfig
from training.models import build_model, load_checkpoint, member_config, save_checkpoint

from .conftest import TINY


@pytest.mark.slow
def test_two_worker_ddp_epochs_from_a_checkpoint(tmp_path, synth_cache, synth_dir):
    ray = pytest.importorskip("ray")
    from training.data import DataSource
    from training.pipeline import RayOptions, Tracking, train_member

    mcfg = member_config("resnet50", **TINY["resnet50"])
    labels = LabelSpace.from_taxonomy_csv(synth_dir / "taxonomy.csv")
    torch.manual_seed(0)
    init = save_checkpoint(tmp_path / "init.pt", build_model(mcfg, len(labels)), labels)
    try:
        res = train_member(
            DataSource(cache=synth_cache),
            mcfg,
            TrainConfig(epochs=2, batch_size=16),
            tmp_path / "ray",
            ray=RayOptions(workers=2, max_failures=1),
            init_from=init,
            tracking=Tracking(track=False),
        )
        assert ray.is_initialized()
        nodes = ray.nodes()
        assert len(nodes) == 1 and nodes[0]["Alive"]
    finally:
        ray.shutdown()
    assert res.best_epoch in (1, 2) and res.stopped == "epochs"
    model, got_labels, blob = load_checkpoint(res.checkpoint)
    assert blob["metrics"]["best_val_roc_auc"] == res.best_val_roc_auc and got_labels == labels
    assert res.soundscape is not None and res.retrain_comparison is not None  # init_from + a cache
    assert (tmp_path / "ray" / "step.json").exists() and (tmp_path / "ray" / "result.json").exists()
