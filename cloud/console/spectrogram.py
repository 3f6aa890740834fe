"""A clip's spectrogram as a PNG, rendered on the server with the one log-mel of
:mod:`shared_features` (the same features the models see; no torch, no plotting library)."""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from shared_features import DEFAULT, FeatureConfig, features_from_audio, load_audio

#: anchor colours of the colour map (dark blue → purple → orange → pale yellow), low to high
_ANCHORS = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float64,
)


@lru_cache(maxsize=1)
def colormap() -> np.ndarray:
    """``[256, 3] uint8``: the anchors interpolated linearly."""
    x = np.linspace(0, len(_ANCHORS) - 1, 256)
    lo = np.floor(x).astype(int).clip(0, len(_ANCHORS) - 2)
    t = (x - lo)[:, None]
    return np.round(_ANCHORS[lo] * (1 - t) + _ANCHORS[lo + 1] * t).astype(np.uint8)


def png(rgb: np.ndarray) -> bytes:
    """``[height, width, 3] uint8`` → PNG bytes (8-bit RGB, no interlace)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected [h, w, 3] uint8, got {rgb.shape} {rgb.dtype}")
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def image(features: np.ndarray, lo: float = -2.5, hi: float = 3.5) -> np.ndarray:
    """``[n_mels, frames] float32`` standardised log-mel → ``[n_mels, frames, 3] uint8``, low
    frequencies at the bottom."""
    scaled = np.clip((features - lo) / (hi - lo), 0.0, 1.0)
    idx = np.round(scaled * 255).astype(np.uint8)
    return colormap()[idx[::-1]]


def render(path: Path | str, max_seconds: float = 30.0, cfg: FeatureConfig = DEFAULT) -> bytes:
    """The clip's log-mel spectrogram as PNG: one column per STFT frame, one row per mel band;
    each 5 s window computed on its own (as the models see it) and laid side by side."""
    audio = load_audio(Path(path), cfg, max_duration=None, min_duration=0.05)
    audio = audio[: int(max_seconds * cfg.sample_rate)]
    if audio.size < cfg.window_samples:
        audio = np.pad(audio, (0, cfg.window_samples - audio.size))
    feats, _ = features_from_audio(audio, cfg)
    return png(image(np.concatenate(list(feats), axis=1)))
