"""The streaming log-mel gives the batch path's windows and computes each frame once."""

from __future__ import annotations

import numpy as np
import pytest

from shared_features import DEFAULT, EDGE, StreamingLogMel, features_from_audio, load_audio
from shared_features.streaming import iter_window_features

from ..conftest import tone


def stream(x: np.ndarray, cfg, seed: int = 0):
    s = StreamingLogMel(cfg)
    rng = np.random.default_rng(seed)
    out, i = [], 0
    while i < x.size:
        n = int(rng.integers(1, 40_000))
        out += s.push(x[i : i + n])
        i += n
    out += s.flush()
    return out, s


@pytest.mark.parametrize(
    "cfg",
    [DEFAULT, EDGE, DEFAULT.replace(window_stride_seconds=1.3)],
    ids=["stride5", "stride2.5", "stride1.3-unshared"],
)
@pytest.mark.parametrize("seconds", [3.0, 5.0, 17.3, 31.0])
def test_stream_equals_batch(cfg, seconds):
    x = tone(seconds, seed=int(seconds * 10))
    out, _ = stream(x, cfg)
    feats, wins = features_from_audio(x, cfg)
    assert [w for w, _ in out] == wins
    for (_, a), b in zip(out, feats):
        assert np.abs(a - b).max() < 1e-4


def test_real_soundscape_stream_shares_frames(mini):
    x = load_audio(mini / "train_soundscapes" / "H02_20230420_074000.ogg")
    out, s = stream(x, EDGE, seed=4)
    feats, wins = features_from_audio(x, EDGE)
    assert len(out) == len(wins) == 23
    assert max(float(np.abs(a - b).max()) for (_, a), b in zip(out, feats)) < 1e-4
    # every STFT frame of the minute exactly once, although windows overlap by half
    assert s.frames_computed == 1 + (x.size - EDGE.n_fft) // EDGE.hop_length


def test_stream_memory_is_bounded():
    s = StreamingLogMel(EDGE)
    for _ in range(100):
        s.push(tone(3.0))
    assert s._buf.size <= EDGE.window_samples + 3 * 32_000
    assert s._frames.shape[0] <= EDGE.n_frames + 3 * 64 + 8


def test_push_after_flush_is_an_error():
    s = StreamingLogMel()
    s.push(tone(1.0))
    assert len(s.flush()) == 1
    with pytest.raises(RuntimeError):
        s.push(tone(1.0))


def test_iter_window_features_file(mini):
    p = mini / "train_audio" / "turvul" / "XC748979.mp3"
    got = list(iter_window_features(p, DEFAULT, chunk_seconds=2.0))
    feats, wins = features_from_audio(load_audio(p))
    assert [w for w, _ in got] == wins
    # chunked resampling differs from one-piece resampling only at the filter's edges
    assert max(float(np.abs(a - b).max()) for (_, a), b in zip(got, feats)) < 5e-2
