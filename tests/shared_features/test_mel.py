"""The numpy reference log-mel against librosa, and the torch path against numpy on real clips."""

from __future__ import annotations

import numpy as np
import pytest

from shared_features import DEFAULT, PANNS, features_from_audio, load_audio, log_mel, mel_filterbank

from ..conftest import tone


@pytest.mark.parametrize("cfg", [DEFAULT, PANNS], ids=["default", "panns"])
def test_filterbank_equals_librosa(cfg):
    librosa = pytest.importorskip("librosa")
    ref = librosa.filters.mel(
        sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax
    )
    fb = mel_filterbank(cfg)
    assert fb.shape == (cfg.n_mels, cfg.n_fft // 2 + 1) and fb.dtype == np.float32
    assert np.abs(fb - ref).max() < 1e-7


def test_log_mel_equals_librosa_recipe(mini):
    librosa = pytest.importorskip("librosa")
    x = load_audio(mini / "train_soundscapes" / "H02_20230420_074000.ogg")[: DEFAULT.window_samples]
    S = librosa.feature.melspectrogram(
        y=x, sr=32_000, n_fft=2048, hop_length=500, n_mels=128, fmin=50, fmax=14_000, center=False, power=2.0
    )
    db = librosa.power_to_db(S, ref=1.0, amin=1e-10, top_db=80.0)
    db = (db - db.mean()) / (db.std() + 1e-6)
    assert np.abs(log_mel(x) - db).max() < 1e-4


def test_shapes_and_batching():
    x = tone(5.0)
    single = log_mel(x)
    assert single.shape == (128, 316) and single.dtype == np.float32
    batch = log_mel(np.stack([x, 0.5 * x, tone(5.0, freq=500.0)]))
    assert batch.shape == (3, 128, 316)
    assert np.allclose(batch[0], single, atol=1e-5)
    # standardised per window: gain does not change the features
    assert np.allclose(batch[1], single, atol=1e-3)
    assert abs(float(single.mean())) < 1e-4 and abs(float(single.std()) - 1) < 1e-3
    with pytest.raises(ValueError, match="160000"):
        log_mel(x[:1000])


def test_tone_lands_in_the_right_band():
    f = log_mel(tone(5.0, freq=3000.0), DEFAULT.replace(normalization="none"))
    fb = mel_filterbank(DEFAULT)
    expected_band = int(np.argmax(fb[:, int(3000 / 32000 * 2048)]))
    assert abs(int(np.argmax(f.mean(axis=1))) - expected_band) <= 1


def test_features_from_audio_windows():
    feats, wins = features_from_audio(tone(12.0))
    assert feats.shape == (3, 128, 316) and [w.start for w in wins] == [0.0, 5.0, 10.0]
    assert wins[-1].valid == pytest.approx(2.0)


@pytest.mark.torch
def test_torch_matches_numpy_on_real_clips(mini):
    torch = pytest.importorskip("torch")
    from shared_features.mel_torch import TorchLogMel
    from shared_features.windows import frame_windows

    m = TorchLogMel(DEFAULT)
    files = [
        mini / "train_soundscapes" / "H02_20230420_074000.ogg",
        mini / "train_audio" / "turvul" / "XC552488.mp3",
        mini / "train_audio" / "66578" / "Pristimantis_bogotensis15.wav",
    ]
    for f in files:
        wins, _ = frame_windows(load_audio(f))
        ref = log_mel(wins)
        with torch.no_grad():
            out = m(torch.from_numpy(wins)).numpy()
        # the stated tolerance of the torch path (float32, different FFT)
        assert np.abs(out - ref).max() <= 2e-3, f


@pytest.mark.torch
def test_torch_panns_preset_and_bad_input():
    torch = pytest.importorskip("torch")
    from shared_features.mel_torch import TorchLogMel

    x = tone(5.0)
    out = TorchLogMel(PANNS)(torch.from_numpy(x)).numpy()[0]
    assert out.shape == (64, PANNS.n_frames)
    assert np.abs(out - log_mel(x, PANNS)).max() < 2e-3
    with pytest.raises(ValueError, match="160000"):
        TorchLogMel(DEFAULT)(torch.zeros(1, 10))
