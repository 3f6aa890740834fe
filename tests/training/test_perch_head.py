"""The embedding head on Perch embeddings (a tiny Perch-shaped model written at test time)."""

from __future__ import annotations

from pathlib import Path

from shared_features import LabelSpace
from shared_features.perch import Perch
from tests.perch_model import write_tiny_perch


def test_embedding_head_trains_on_perch(synth_dir, tmp_path):
    from shared_features.birdnet import EmbeddingHead
    from training.birdnet_head import train_birdnet_head

    labels = LabelSpace.from_taxonomy_csv(synth_dir / "taxonomy.csv")
    res = train_birdnet_head(
        synth_dir,
        tmp_path,
        epochs=20,
        embedder=Perch(*write_tiny_perch(tmp_path / "perch"), labels),
    )
    head = EmbeddingHead.load(Path(str(res["head"])))
    assert head.embedder == "perch" and head.weight.shape == (16, 8)
