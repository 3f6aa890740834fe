"""The embedding head on Perch embeddings (a tiny Perch-shaped model from tests/data)."""

from __future__ import annotations

from pathlib import Path

from shared_features import LabelSpace
from shared_features.perch import Perch

DATA = Path(__file__).resolve().parents[1] / "data"


def test_embedding_head_trains_on_perch(synth_dir, tmp_path):
    from shared_features.birdnet import EmbeddingHead
    from training.birdnet_head import train_birdnet_head

    labels = LabelSpace.from_taxonomy_csv(synth_dir / "taxonomy.csv")
    res = train_birdnet_head(
        synth_dir,
        tmp_path,
        epochs=20,
        embedder=Perch(DATA / "tiny_perch.tflite", DATA / "tiny_perch_labels.txt", labels),
    )
    head = EmbeddingHead.load(Path(str(res["head"])))
    assert head.embedder == "perch" and head.weight.shape == (16, 8)
