"""Regenerate the golden feature vectors (only together with a FEATURE_VERSION bump):

.venv/bin/python tests/shared_features/make_golden.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).with_name("golden_default.npz")


def golden_input() -> np.ndarray:
    """5 s of seeded synthetic audio at 32 kHz as int16: a rising chirp, a harmonic stack with
    vibrato and pink-ish noise, so every mel band carries signal."""
    sr, n = 32_000, 160_000
    t = np.arange(n) / sr
    rng = np.random.default_rng(20250420)
    chirp = 0.3 * np.sin(2 * np.pi * (500 * t + 1200 * t**2))
    f0 = 800 + 60 * np.sin(2 * np.pi * 6 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    stack = sum(0.1 / k * np.sin(k * phase) for k in range(1, 6))
    noise = np.cumsum(rng.standard_normal(n)) * 1e-3
    noise -= np.convolve(noise, np.ones(64) / 64, mode="same")
    x = chirp + stack + noise + 0.02 * rng.standard_normal(n)
    return np.clip(np.round(x / np.abs(x).max() * 0.8 * 32767), -32768, 32767).astype(np.int16)


def main() -> None:
    from shared_features import DEFAULT, FEATURE_VERSION, log_mel

    pcm = golden_input()
    feats = log_mel(pcm.astype(np.float32) / 32768.0, DEFAULT)
    np.savez_compressed(
        GOLDEN, pcm=pcm, features=feats, feature_version=FEATURE_VERSION, fingerprint=DEFAULT.fingerprint()
    )
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes), fingerprint {DEFAULT.fingerprint()}")


if __name__ == "__main__":
    main()
