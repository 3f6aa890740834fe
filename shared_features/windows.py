"""Fixed-length analysis windows and their times.

Policy (the same for the batch path, the chunked path and the live stream):

* Windows start at ``k * stride`` for ``k = 0, 1, …``; each is ``window_seconds`` long.
* Every window that lies wholly inside the recording is kept.
* After the last full window, one more window starting at the next stride position is kept,
  zero-padded to full length, if it holds at least ``min_final_window_seconds`` of audio that no
  earlier window covered. Otherwise the tail is dropped.
* A recording shorter than one window gives exactly one zero-padded window.

A window's ``end`` time is its nominal end (start + window length), even when padded; ``valid``
says how many seconds of it are real audio. BirdCLEF ``row_id``s use the nominal end second.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from shared_features.config import DEFAULT, FeatureConfig


@dataclass(frozen=True)
class Window:
    index: int
    start: float
    end: float
    valid: float

    @property
    def end_second(self) -> int:
        """The BirdCLEF row_id suffix: the window's nominal end in whole seconds."""
        return int(round(self.end))


def final_window_start(n_full: int, n_samples: int, cfg: FeatureConfig = DEFAULT) -> int | None:
    """The one place of the final-window rule: after ``n_full`` full windows of a recording of
    ``n_samples`` samples, the start sample of the zero-padded final window, or ``None`` when the
    policy drops the tail. Used by the batch, chunked and streaming paths alike."""
    if n_samples <= 0:
        return None
    start = n_full * cfg.stride_samples
    if start >= n_samples:
        return None
    if n_full == 0:
        return 0  # shorter than one window: one padded window
    uncovered = n_samples - ((n_full - 1) * cfg.stride_samples + cfg.window_samples)
    min_tail = int(round(cfg.min_final_window_seconds * cfg.sample_rate))
    return start if uncovered > 0 and uncovered >= min_tail else None


def window_starts(n_samples: int, cfg: FeatureConfig = DEFAULT) -> list[int]:
    """Start sample of every window of a recording of ``n_samples`` samples (see module policy)."""
    win, stride = cfg.window_samples, cfg.stride_samples
    n_full = 0 if n_samples < win else 1 + (n_samples - win) // stride
    starts = [k * stride for k in range(n_full)]
    final = final_window_start(n_full, n_samples, cfg)
    return starts if final is None else [*starts, final]


def count_windows(n_samples: int, cfg: FeatureConfig = DEFAULT) -> int:
    return len(window_starts(n_samples, cfg))


def window_times(n_samples: int, cfg: FeatureConfig = DEFAULT) -> list[Window]:
    sr, win = cfg.sample_rate, cfg.window_samples
    return [
        Window(i, s / sr, (s + win) / sr, min(win, n_samples - s) / sr)
        for i, s in enumerate(window_starts(n_samples, cfg))
    ]


def frame_windows(samples: np.ndarray, cfg: FeatureConfig = DEFAULT) -> tuple[np.ndarray, list[Window]]:
    """``[n] float32`` → ``[n_windows, window_samples] float32`` (zero-padded) and their times."""
    samples = np.asarray(samples, dtype=np.float32)
    win = cfg.window_samples
    starts = window_starts(samples.size, cfg)
    out = np.zeros((len(starts), win), dtype=np.float32)
    for i, s in enumerate(starts):
        chunk = samples[s : s + win]
        out[i, : chunk.size] = chunk
    return out, window_times(samples.size, cfg)


def iter_windows(
    chunks: Iterable[np.ndarray], cfg: FeatureConfig = DEFAULT
) -> Iterator[tuple[Window, np.ndarray]]:
    """Windows of a stream of ``[n] float32`` chunks, with the module's policy:
    ``(Window, [window_samples] float32)``, the last one zero-padded. Holds one window plus one
    chunk of audio at a time, so hour-long recordings stay in bounded memory."""
    win, stride = cfg.window_samples, cfg.stride_samples
    buf = np.zeros(0, np.float32)
    buf_start = 0
    total = 0
    k = 0
    for chunk in chunks:
        buf = np.concatenate([buf, np.asarray(chunk, np.float32).reshape(-1)])
        total += chunk.size
        while k * stride + win <= total:
            s = k * stride - buf_start
            yield (
                Window(
                    k,
                    k * stride / cfg.sample_rate,
                    (k * stride + win) / cfg.sample_rate,
                    win / cfg.sample_rate,
                ),
                buf[s : s + win].copy(),
            )
            k += 1
        cut = k * stride - buf_start
        if cut > 0:
            buf = buf[cut:]
            buf_start += cut
    start = final_window_start(k, total, cfg)
    if start is not None:
        tail = buf[start - buf_start : total - buf_start]
        out = np.zeros(win, np.float32)
        out[: tail.size] = tail
        yield (
            Window(k, start / cfg.sample_rate, (start + win) / cfg.sample_rate, tail.size / cfg.sample_rate),
            out,
        )


def window_activity(window: np.ndarray, block: int = 2048) -> tuple[float, float]:
    """``(rms_dbfs, snr_db)`` of one window: its level, and the ratio (dB) between the loud
    (95th percentile) and quiet (10th percentile) blocks' energy, a cheap call-activity score."""
    x = np.asarray(window, np.float32)
    n = (x.size // block) * block
    if n == 0:
        return -120.0, 0.0
    e = np.mean(np.square(x[:n].reshape(-1, block), dtype=np.float64), axis=1) + 1e-12
    rms_db = float(10 * np.log10(np.mean(e)))
    snr = float(10 * np.log10(np.percentile(e, 95) / np.percentile(e, 10)))
    return rms_db, snr
