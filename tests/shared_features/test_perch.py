"""The Perch interface with a tiny Perch-shaped TFLite model written at test time
(``tests/perch_model.py``; 5 s at 32 kHz in, a 16-d embedding and 3 logits out) — Perch itself is
never downloaded."""

from __future__ import annotations

import numpy as np
import pytest

from shared_features import LabelSpace, frame_windows, load_audio
from shared_features.perch import Perch, PerchError
from tests.perch_model import write_tiny_perch


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_perch(tmp_path_factory.mktemp("perch"))


def test_perch_maps_codes_and_embeds_real_windows(mini, tiny):
    labels = LabelSpace.from_taxonomy_csv(mini / "taxonomy.csv")
    p = Perch(*tiny, labels)
    assert int(p.known.sum()) == 2 and p.known[labels.index("cattyr")] and p.dim == 16
    w, _ = frame_windows(load_audio(mini / "train_soundscapes" / "H02_20230420_074000.ogg"))
    out = p.predict_windows(w[:3])
    assert out.probs.shape == (3, 206) and out.embeddings.shape == (3, 16)
    assert np.all(out.probs[:, ~p.known] == 0) and np.all((out.probs >= 0) & (out.probs <= 1))
    assert np.isfinite(out.embeddings).all() and out.embeddings.std() > 0


def test_perch_refuses_missing_or_mismatched_files(mini, tmp_path, tiny):
    labels = LabelSpace.from_taxonomy_csv(mini / "taxonomy.csv")
    with pytest.raises(PerchError, match="not downloaded"):
        Perch(tmp_path / "perch.tflite", tiny[1], labels)
    (tmp_path / "classes.txt").write_text("a\nb\nc\nd\ne\n")
    with pytest.raises(PerchError, match="5 logits"):
        Perch(tiny[0], tmp_path / "classes.txt", labels)
