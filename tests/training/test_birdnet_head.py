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


def test_head_continues_from_a_head():
    """``init``: the starting point is the given head (weights and standardisation), so with no
    steps the head is unchanged, and a few steps stay close to it; another label space is refused."""
    from shared_features import LabelSpace
    from training.errors import TrainingError

    labels = LabelSpace.default()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 16)).astype(np.float32)
    y = (rng.random((40, len(labels))) < 0.05).astype(np.float32)
    start, _ = fit_head(x, y, labels, epochs=5, seed=1)
    same, _ = fit_head(x + 3.0, y, labels, epochs=0, init=start)  # other data: its mean is not used
    assert np.array_equal(same.mean, start.mean) and np.allclose(same.weight, start.weight)
    assert np.allclose(same.predict(x), start.predict(x))
    near, _ = fit_head(x, y, labels, epochs=2, lr=1e-4, init=start)
    assert np.abs(near.weight - start.weight).max() < 1e-2
    ten = LabelSpace(list(labels)[:10])
    with pytest.raises(TrainingError, match="label space"):
        fit_head(x, y[:, :10], ten, init=start)
