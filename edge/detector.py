"""Streaming detection: sliding 5 s windows (default stride 2.5 s) over the shared streaming log-mel,
a model backend chosen from the installed package's metadata, per-species thresholds, merging of
consecutive windows into one event while a species keeps calling, and confidence bands.

Backends: an ``edge`` model package (ONNX Runtime or TFLite — :mod:`shared_features.package` picks
by the member's ``runtime``), or BirdNET v2.4 zero-shot when no trained package is installed (the
agent says so). Confidence bands (the edge's own score, never the cloud's verdict): ``high`` (score ≥ 0.85),
``medium`` (≥ 0.6), ``low`` (≥ the
species' threshold).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shared_features import DEFAULT, FeatureConfig, LabelSpace
from shared_features.labels import Species, taxonomy_path
from shared_features.streaming import StreamingLogMel
from shared_features.windows import Window

log = logging.getLogger(__name__)

BANDS = (("high", 0.85), ("medium", 0.6))


def band_of(p: float) -> str:
    for name, lo in BANDS:
        if p >= lo:
            return name
    return "low"


class Scorer(Protocol):
    """A model backend: one window → ``[n_species]`` probabilities."""

    labels: LabelSpace
    version: str
    description: str
    needs_features: bool

    def score(self, window: np.ndarray, feats: np.ndarray | None) -> np.ndarray: ...


class PackageScorer:
    """An installed edge package (ONNX fp32/int8 or TFLite)."""

    needs_features = True

    def __init__(self, path: Path, threads: int = 1) -> None:
        from shared_features.package import load_package

        self.path = Path(path)
        self.package = load_package(path, threads=threads)
        m = self.package.members[0]
        self.labels = self.package.labels
        self.version = f"{self.package.name} {self.package.version}"
        self.description = f"{self.version} ({m.runtime}, {m.quantization})"

    def score(self, window: np.ndarray, feats: np.ndarray | None) -> np.ndarray:
        assert feats is not None
        return np.asarray(self.package.predict_features(feats[None])[0], np.float32)


class BirdNETScorer:
    """BirdNET v2.4 zero-shot: the birds it knows, nothing else."""

    needs_features = False

    def __init__(self, labels: LabelSpace, threads: int = 1) -> None:
        from shared_features.birdnet import BirdNET

        self.model = BirdNET(labels, num_threads=threads, embeddings=False)
        self.labels = labels
        self.version = "birdnet-v2.4"
        self.description = (
            f"BirdNET v2.4 zero-shot ({int(self.model.known.sum())} of {len(labels)} species; "
            "no trained package installed)"
        )

    def score(self, window: np.ndarray, feats: np.ndarray | None) -> np.ndarray:
        return np.asarray(self.model.predict_windows(window[None]).probs[0], np.float32)


def load_scorer(model_path: Path | None, taxonomy: Path | None, threads: int = 1) -> Scorer:
    if model_path is not None:
        return PackageScorer(model_path, threads)
    log.warning("no trained package installed: using BirdNET v2.4 zero-shot (birds only)")
    return BirdNETScorer(LabelSpace.from_taxonomy_csv(taxonomy_path(taxonomy)), threads)


@dataclass
class WindowResult:
    window: Window
    probs: np.ndarray  # [n_species] float32
    samples: np.ndarray  # [window_samples] float32, this result's own copy
    feats: np.ndarray  # [n_mels, n_frames] float32, the log-mel the model saw


@dataclass
class Event:
    """A species calling over consecutive windows; ``uuid`` is set once it is stored."""

    species: Species
    start: float
    end: float
    confidence: float
    last_window: int
    uuid: str | None = None
    new: bool = True

    @property
    def band(self) -> str:
        return band_of(self.confidence)


@dataclass
class Detector:
    scorer: Scorer
    threshold: float = 0.5
    thresholds: dict[str, float] = field(default_factory=dict)
    stride_seconds: float = 2.5
    keep_seconds: float = 60.0

    def __post_init__(self) -> None:
        self.cfg: FeatureConfig = DEFAULT.replace(name="edge", window_stride_seconds=self.stride_seconds)
        self.thr = np.full(len(self.scorer.labels), self.threshold, np.float32)
        for code, t in self.thresholds.items():
            self.thr[self.scorer.labels.index(code)] = t
        self.reset()

    def reset(self) -> None:
        """A new segment: fresh features, no open events."""
        self.stream = StreamingLogMel(self.cfg)
        self.ring = _Ring(int(self.keep_seconds * self.cfg.sample_rate), self.cfg.window_samples)
        self.open: dict[str, Event] = {}

    def audio(self, start_s: float, end_s: float) -> np.ndarray | None:
        """Samples of the current segment between two offsets (a copy), if still held."""
        sr = self.cfg.sample_rate
        view = self.ring.get(int(start_s * sr), int(end_s * sr))
        return None if view is None else view.copy()

    def push(self, chunk: np.ndarray) -> list[WindowResult]:
        x = np.asarray(chunk, np.float32).reshape(-1)
        step = self.ring.keep // 2  # a longer chunk goes in parts, so each window is still held
        out: list[WindowResult] = []
        for i in range(0, max(x.size, 1), step):
            part = x[i : i + step]
            self.ring.append(part)
            out += [self._score(w, f) for w, f in self.stream.push(part)]
        return out

    def flush(self) -> list[WindowResult]:
        return [self._score(w, f) for w, f in self.stream.flush()]

    def _score(self, w: Window, feats: np.ndarray) -> WindowResult:
        sr = self.cfg.sample_rate
        a = int(w.start * sr)
        samples = np.zeros(self.cfg.window_samples, np.float32)  # the final window stays zero-padded
        got = self.ring.get(a, min(a + self.cfg.window_samples, self.ring.end))
        if got is not None:
            samples[: got.size] = got
        probs = self.scorer.score(samples, feats if self.scorer.needs_features else None)
        return WindowResult(w, np.asarray(probs, np.float32), samples, feats)

    def events(self, r: WindowResult) -> tuple[list[Event], list[Event]]:
        """Update the open events with one window: (started or extended events, closed events)."""
        above = np.where(r.probs >= self.thr)[0]
        active, closed = [], []
        codes = set()
        for j in above:
            sp = self.scorer.labels[int(j)]
            codes.add(sp.code)
            p = float(r.probs[j])
            ev = self.open.get(sp.code)
            if ev is not None and ev.last_window == r.window.index - 1:
                ev.end, ev.last_window, ev.new = r.window.end, r.window.index, False
                ev.confidence = max(ev.confidence, p)
            else:
                if ev is not None:
                    closed.append(ev)
                ev = Event(sp, r.window.start, r.window.end, p, r.window.index)
                self.open[sp.code] = ev
            active.append(ev)
        for code in list(self.open):
            if code not in codes:
                closed.append(self.open.pop(code))
        return active, closed

    def close_all(self) -> list[Event]:
        out = list(self.open.values())
        self.open.clear()
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.scorer.description,
            "threshold": self.threshold,
            "stride_s": self.stride_seconds,
        }


class _Ring:
    """The last ``keep`` samples of a segment in one contiguous buffer: appending copies the chunk
    in once, reading a window is a view (no per-window concatenation of the whole history). The
    buffer has room for ``keep`` plus ``slack`` samples; when full, the newest ``keep`` move to its
    front (one copy per ``slack`` samples appended)."""

    def __init__(self, keep: int, window: int) -> None:
        self.keep = max(keep, window)
        slack = max(4 * window, self.keep // 4)
        self.buf = np.zeros(self.keep + slack, np.float32)
        self.n = 0  # samples in buf
        self.start = 0  # absolute index of buf[0]

    @property
    def end(self) -> int:
        return self.start + self.n

    def append(self, x: np.ndarray) -> None:
        if x.size > self.keep:  # a chunk longer than what is kept: only its end matters
            self.start += self.n + x.size - self.keep
            self.n = 0
            x = x[-self.keep :]
        if self.n + x.size > self.buf.size:
            drop = self.n + x.size - self.keep  # keep the newest `keep` samples after this chunk
            drop = min(drop, self.n)
            self.buf[: self.n - drop] = self.buf[drop : self.n]
            self.n -= drop
            self.start += drop
        self.buf[self.n : self.n + x.size] = x
        self.n += x.size

    def get(self, a: int, b: int) -> np.ndarray | None:
        """``[b - a] float32`` view of absolute samples ``a:b``, or None if not all are held."""
        if a < self.start or b > self.end or b < a:
            return None
        return self.buf[a - self.start : b - self.start]
