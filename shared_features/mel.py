"""The reference log-mel implementation (numpy). Edge and cloud use it; the torch path in
:mod:`shared_features.mel_torch` uses the very same filterbank and framing.

Recipe for one window ``x`` of ``window_samples`` samples:

1. frames ``x[k*hop : k*hop + n_fft]`` for ``k < n_frames`` (no centre padding),
   times a periodic Hann window;
2. ``|rfft|**power`` → ``[n_freqs, n_frames]``;
3. Slaney mel filterbank (Slaney mel scale, area-normalised triangles, as ``librosa.filters.mel``
   with ``htk=False, norm='slaney'``) → ``[n_mels, n_frames]``;
4. ``log_scale='db'``: ``10*log10(max(S, amin))``, then, per window, clip at ``max - top_db``;
5. ``normalization='standardize'``: per window, subtract the mean and divide by
   ``std + norm_eps``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from shared_features.config import DEFAULT, FeatureConfig
from shared_features.windows import Window, frame_windows


def hz_to_mel(freq: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep, mels)


def mel_to_hz(mels: np.ndarray | float) -> np.ndarray:
    m = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), freqs)


@lru_cache(maxsize=16)
def _filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mel_pts = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_pts[2 : n_mels + 2] - mel_pts[:n_mels])
    weights *= enorm[:, None]
    fb = weights.astype(np.float32)
    fb.setflags(write=False)
    return fb


def mel_filterbank(cfg: FeatureConfig = DEFAULT) -> np.ndarray:
    """``[n_mels, n_freqs] float32`` Slaney filterbank (read-only, cached)."""
    return _filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, float(cfg.fmin), float(cfg.fmax))


@lru_cache(maxsize=16)
def _hann(n: int) -> np.ndarray:
    w = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)  # periodic
    w.setflags(write=False)
    return w


def hann_window(cfg: FeatureConfig = DEFAULT) -> np.ndarray:
    """``[n_fft] float32`` periodic Hann window."""
    return _hann(cfg.n_fft)


def frame_power(frames: np.ndarray, cfg: FeatureConfig = DEFAULT) -> np.ndarray:
    """``[..., n_frames, n_fft]`` float32 frames → ``[..., n_frames, n_freqs]`` float32 power."""
    spec = np.fft.rfft(frames * hann_window(cfg), axis=-1)
    mag = np.abs(spec).astype(np.float32)
    return mag * mag if cfg.power == 2.0 else mag


def stft_frames(x: np.ndarray, cfg: FeatureConfig = DEFAULT) -> np.ndarray:
    """``[..., n] float32`` → ``[..., n_frames_total, n_fft]`` view of the frames (no padding)."""
    n = x.shape[-1]
    n_frames = 1 + (n - cfg.n_fft) // cfg.hop_length
    view = np.lib.stride_tricks.sliding_window_view(x, cfg.n_fft, axis=-1)
    return view[..., : (n_frames - 1) * cfg.hop_length + 1 : cfg.hop_length, :]


def mel_from_power(power: np.ndarray, cfg: FeatureConfig = DEFAULT) -> np.ndarray:
    """``[..., n_frames, n_freqs]`` → ``[..., n_mels, n_frames]`` float32 mel power."""
    mel = power @ mel_filterbank(cfg).T
    return np.ascontiguousarray(np.swapaxes(mel, -1, -2), dtype=np.float32)


def finish(mel: np.ndarray, cfg: FeatureConfig = DEFAULT) -> np.ndarray:
    """Log scaling, top_db clipping and normalisation of ``[..., n_mels, n_frames]`` mel power,
    each window (the last two axes) on its own."""
    out: np.ndarray = mel.astype(np.float32, copy=True)
    if cfg.log_scale == "db":
        out = 10.0 * np.log10(np.maximum(out, np.float32(cfg.amin)))
        if cfg.top_db is not None:
            peak = out.max(axis=(-2, -1), keepdims=True)
            out = np.maximum(out, peak - np.float32(cfg.top_db))
    if cfg.normalization == "standardize":
        mean = out.mean(axis=(-2, -1), keepdims=True, dtype=np.float64)
        std = out.std(axis=(-2, -1), keepdims=True, dtype=np.float64)
        out = (out - mean) / (std + cfg.norm_eps)
    return out.astype(np.float32, copy=False)


def log_mel(windows: np.ndarray, cfg: FeatureConfig = DEFAULT) -> np.ndarray:
    """``[window_samples]`` or ``[batch, window_samples]`` float32 → ``[n_mels, n_frames]`` or
    ``[batch, n_mels, n_frames]`` float32 features."""
    x = np.asarray(windows, dtype=np.float32)
    if x.shape[-1] != cfg.window_samples:
        raise ValueError(f"expected windows of {cfg.window_samples} samples, got shape {x.shape}")
    return finish(mel_from_power(frame_power(stft_frames(x, cfg), cfg), cfg), cfg)


def features_from_audio(samples: np.ndarray, cfg: FeatureConfig = DEFAULT) -> tuple[np.ndarray, list[Window]]:
    """Whole recording ``[n] float32`` → (``[n_windows, n_mels, n_frames]`` float32, windows).

    The reference batch path: every window is computed on its own. The live path that shares
    frames between overlapping windows is :class:`shared_features.streaming.StreamingLogMel`.
    """
    wins, times = frame_windows(samples, cfg)
    if len(times) == 0:
        return np.zeros((0, cfg.n_mels, cfg.n_frames), np.float32), times
    feats = np.empty((len(times), cfg.n_mels, cfg.n_frames), np.float32)
    batch = 32
    for i in range(0, len(times), batch):
        feats[i : i + batch] = log_mel(wins[i : i + batch], cfg)
    return feats, times
