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
from collections import deque
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
    probs: np.ndarray  # [n_species]
    samples: np.ndarray  # [window_samples]


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
        self.ring: deque[np.ndarray] = deque()
        self.ring_start = 0  # absolute sample index of the ring's first sample
        self.ring_len = 0
        self.open: dict[str, Event] = {}

    def audio(self, start_s: float, end_s: float) -> np.ndarray | None:
        """Samples of the current segment between two offsets, if still in the ring buffer."""
        sr = self.cfg.sample_rate
        a, b = int(start_s * sr), int(end_s * sr)
        if a < self.ring_start or b > self.ring_start + self.ring_len:
            return None
        buf = np.concatenate(list(self.ring)) if self.ring else np.zeros(0, np.float32)
        return buf[a - self.ring_start : b - self.ring_start]

    def _keep(self, chunk: np.ndarray) -> None:
        self.ring.append(chunk)
        self.ring_len += chunk.size
        limit = int(self.keep_seconds * self.cfg.sample_rate)
        while self.ring and self.ring_len - self.ring[0].size >= limit:
            self.ring_len -= self.ring[0].size
            self.ring_start += self.ring[0].size
            self.ring.popleft()

    def push(self, chunk: np.ndarray) -> list[WindowResult]:
        self._keep(np.asarray(chunk, np.float32))
        return [self._score(w, f) for w, f in self.stream.push(chunk)]

    def flush(self) -> list[WindowResult]:
        return [self._score(w, f) for w, f in self.stream.flush()]

    def _score(self, w: Window, feats: np.ndarray) -> WindowResult:
        samples = self.audio(w.start, w.end)
        if samples is None or samples.size < self.cfg.window_samples:  # the zero-padded final window
            got = samples if samples is not None else np.zeros(0, np.float32)
            samples = np.pad(got, (0, self.cfg.window_samples - got.size))
        probs = self.scorer.score(samples, feats if self.scorer.needs_features else None)
        return WindowResult(w, np.asarray(probs, np.float32), samples)

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
