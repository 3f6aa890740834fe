"""A linear head on BirdNET embeddings learns species BirdNET does not know (synthetic ones)."""

from __future__ import annotations

import numpy as np
import pytest

from shared_features import DEFAULT, frame_windows, load_audio
from training.birdnet_head import EmbeddingHead, embed, fit_head
from training.dataset import BirdCLEFDataset

birdnet = pytest.importorskip("shared_features.birdnet")


@pytest.mark.slow
def test_head_on_embeddings(tmp_path, synth_dir):
    ds = BirdCLEFDataset.load(synth_dir)
    model = birdnet.BirdNET(ds.labels, num_threads=2)
    assert not model.known.any()  # synthetic species: BirdNET knows none of them
    wins, ys = [], []
    for r in ds.recordings:
        w, _ = frame_windows(load_audio(ds.audio_path(r)), DEFAULT)
        wins.append(w[:1])
        ys.append(ds.label_vector(r)[None])
    x = embed(model, np.concatenate(wins))
    y = np.concatenate(ys)
    assert x.shape == (len(ds.recordings), 1024) and np.isfinite(x).all()
    head, hist = fit_head(x[::2], y[::2], ds.labels, val=(x[1::2], y[1::2]), epochs=100)
    assert hist["val_roc_auc"] > 0.6  # held-out clips, species unknown to BirdNET itself
    p = head.predict(x)
    assert p.shape == (len(x), len(ds.labels)) and ((0 <= p) & (p <= 1)).all()
    again = EmbeddingHead.load(head.save(tmp_path / "head.npz"))
    assert np.allclose(again.predict(x), p) and again.labels == ds.labels


@pytest.mark.slow
def test_birdnet_head_command(tmp_path, synth_dir, capsys):
    from silencio.cli import main

    rc = main(
        [
            "train",
            "birdnet-head",
            "--data",
            str(synth_dir),
            "--out",
            str(tmp_path / "h"),
            "--epochs",
            "60",
            "--no-mlflow",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "held-out soundscapes" in out
    assert (tmp_path / "h" / "head.npz").exists() and (tmp_path / "h" / "report" / "report.md").exists()
