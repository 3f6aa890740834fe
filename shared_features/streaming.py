"""Incremental log-mel for live streams and for recordings too long to hold in memory.

:class:`StreamingLogMel` takes audio in chunks of any size and returns each window's features as
soon as the window is complete. When the stride is a multiple of the hop (the default presets),
every STFT frame is computed exactly once and shared by all windows that contain it. The windows
and their features are those of :func:`shared_features.mel.features_from_audio` on the same audio
(equal within float32 rounding, tested), including the final-window policy of
:mod:`shared_features.windows` when :meth:`StreamingLogMel.flush` is called at the end.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from shared_features.audio import AudioSource, iter_audio_chunks
from shared_features.config import DEFAULT, FeatureConfig
from shared_features.mel import finish, frame_power, log_mel, mel_filterbank, stft_frames
from shared_features.windows import Window, final_window_start

WindowFeatures = tuple[Window, np.ndarray]


class StreamingLogMel:
    """Push ``[n] float32`` chunks at ``cfg.sample_rate``; get ``(Window, [n_mels, n_frames])``."""

    def __init__(self, cfg: FeatureConfig = DEFAULT) -> None:
        self.cfg = cfg
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0  # absolute sample index of _buf[0]
        self._total = 0  # samples pushed so far
        self._next_window = 0  # index k of the next window to emit
        self._frames = np.zeros((0, cfg.n_mels), np.float32)  # mel power of cached frames
        self._frame0 = 0  # absolute frame index of _frames[0]
        self._next_frame = 0  # next absolute frame index to compute
        self.frames_computed = 0  # for tests and benchmarks
        self._flushed = False

    @property
    def samples_seen(self) -> int:
        return self._total

    def _window(self, k: int, valid: int) -> Window:
        cfg = self.cfg
        start = k * cfg.stride_samples
        return Window(
            k,
            start / cfg.sample_rate,
            (start + cfg.window_samples) / cfg.sample_rate,
            valid / cfg.sample_rate,
        )

    def _samples(self, start: int, stop: int) -> np.ndarray:
        return self._buf[start - self._buf_start : stop - self._buf_start]

    def _compute_frames(self) -> None:
        cfg = self.cfg
        last_possible = (self._total - cfg.n_fft) // cfg.hop_length  # last frame fully available
        if last_possible < self._next_frame:
            return
        s0 = self._next_frame * cfg.hop_length
        seg = self._samples(s0, last_possible * cfg.hop_length + cfg.n_fft)
        frames = stft_frames(seg, cfg)
        mel = frame_power(frames, cfg) @ mel_filterbank(cfg).T
        self._frames = np.concatenate([self._frames, mel.astype(np.float32)], axis=0)
        self._next_frame = last_possible + 1
        self.frames_computed += frames.shape[0]

    def _trim(self) -> None:
        cfg = self.cfg
        next_start = self._next_window * cfg.stride_samples
        if cfg.frames_shareable:
            first_needed_frame = next_start // cfg.hop_length
            drop = max(0, first_needed_frame - self._frame0)
            if drop:
                self._frames = self._frames[drop:]
                self._frame0 += drop
            keep_from = min(self._next_frame * cfg.hop_length, next_start)
        else:
            keep_from = next_start
        cut = max(0, min(keep_from, self._total) - self._buf_start)
        if cut:
            self._buf = self._buf[cut:]
            self._buf_start += cut

    def push(self, chunk: np.ndarray) -> list[WindowFeatures]:
        """Add samples; return the windows completed by them (possibly none)."""
        if self._flushed:
            raise RuntimeError("push() after flush(); make a new StreamingLogMel")
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        self._buf = np.concatenate([self._buf, chunk])
        self._total += chunk.size
        cfg = self.cfg
        out: list[WindowFeatures] = []
        if cfg.frames_shareable:
            self._compute_frames()
        while True:
            start = self._next_window * cfg.stride_samples
            if start + cfg.window_samples > self._total:
                break
            if cfg.frames_shareable:
                f0 = start // cfg.hop_length - self._frame0
                mel = self._frames[f0 : f0 + cfg.n_frames].T
                feats = finish(mel, cfg)
            else:
                feats = log_mel(self._samples(start, start + cfg.window_samples), cfg)
            out.append((self._window(self._next_window, cfg.window_samples), feats))
            self._next_window += 1
        self._trim()
        return out

    def flush(self) -> list[WindowFeatures]:
        """End of stream: the final zero-padded window, when the window policy keeps one."""
        if self._flushed:
            return []
        self._flushed = True
        cfg = self.cfg
        k = self._next_window
        start = final_window_start(k, self._total, cfg)
        if start is None:
            return []
        tail = self._samples(start, self._total)
        padded = np.zeros(cfg.window_samples, np.float32)
        padded[: tail.size] = tail
        return [(self._window(k, tail.size), log_mel(padded, cfg))]


def iter_window_features(
    src: AudioSource,
    cfg: FeatureConfig = DEFAULT,
    *,
    chunk_seconds: float = 60.0,
) -> Iterator[WindowFeatures]:
    """Windows and features of a recording of any length in bounded memory
    (``chunk_seconds`` of audio plus one window)."""
    stream = StreamingLogMel(cfg)
    for chunk in iter_audio_chunks(src, cfg, chunk_seconds=chunk_seconds):
        yield from stream.push(chunk)
    yield from stream.flush()
