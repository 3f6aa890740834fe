"""Per-species detection thresholds fitted to verdicts (guides' and reviewers' judgements of what
the edge reported). Pure and deterministic: arrays in, numbers out; no I/O, no randomness.

Input per species ``c``: the edge model's scores for ``c`` on judged detections, ``s_1 … s_n``, and
whether each was right (``True``: the animal was ``c``; ``False``: another species or not an
animal).

The rule, per species with ``n`` verdicts (``n_correct`` of them right):

1. **Too little evidence** — ``n < min_verdicts`` (default 3): the threshold stays the default.
2. **The raw fit** ``t*`` — the *lowest* judged score ``t`` such that, among the verdicts scoring
   ``≥ t``, the fraction that were right is at least ``target_precision`` (default 0.9, the goal
   Merlin Sound ID publishes). The lowest such ``t`` keeps as many right detections as the
   precision target allows. Scores below every verdict are never chosen: there is no evidence
   there. When no ``t`` reaches the target (say, every verdict was wrong), ``t*`` sits ``margin``
   (0.01) above the highest wrong score, so those detections stop being reported.
3. **Shrinkage towards the default** ``t0`` (default 0.5) by the amount of evidence:
   ``t = t0 + n / (n + prior_verdicts) · (t* − t0)`` with ``prior_verdicts`` = 10: two verdicts
   move a threshold a sixth of the way (and only with ``min_verdicts`` ≤ 2), 10 verdicts half of
   it, 90 verdicts nine tenths.
4. **Bounds**: ``t`` is clipped to ``[min_threshold, max_threshold]`` = [0.05, 0.99].

Thresholds are fitted from *all* verdicts collected so far, always shrinking towards the same
default — never from the previous threshold — so re-fitting with the same verdicts gives the same
numbers and evidence never compounds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from training.errors import TrainingError


@dataclass(frozen=True)
class ThresholdConfig:
    target_precision: float = 0.9
    default_threshold: float = 0.5
    min_verdicts: int = 3
    prior_verdicts: float = 10.0
    margin: float = 0.01
    min_threshold: float = 0.05
    max_threshold: float = 0.99

    def __post_init__(self) -> None:
        if not 0 < self.target_precision <= 1:
            raise TrainingError(f"target_precision must be in (0, 1], got {self.target_precision}")
        if not 0 <= self.min_threshold <= self.default_threshold <= self.max_threshold <= 1:
            raise TrainingError("need 0 ≤ min_threshold ≤ default_threshold ≤ max_threshold ≤ 1")
        if self.min_verdicts < 1 or self.prior_verdicts < 0 or self.margin < 0:
            raise TrainingError("min_verdicts must be ≥ 1, prior_verdicts and margin ≥ 0")


@dataclass(frozen=True)
class SpeciesThreshold:
    """One species' fit: the evidence, the raw fit ``t*`` (None when too little evidence), the
    shrunk threshold, and the precision on the verdicts at that threshold (None: none at or above
    it)."""

    code: str
    n_verdicts: int
    n_correct: int
    raw: float | None
    threshold: float
    precision_at_threshold: float | None
    kept_correct: int
    reason: str


@dataclass(frozen=True)
class ThresholdFit:
    config: ThresholdConfig
    species: Mapping[str, SpeciesThreshold]

    @property
    def thresholds(self) -> dict[str, float]:
        """Species whose threshold differs from the default → threshold (the edge's
        ``thresholds.json`` format: ``{"code": threshold}``; absent species use the default)."""
        return {
            c: s.threshold
            for c, s in sorted(self.species.items())
            if not math.isclose(s.threshold, self.config.default_threshold, abs_tol=1e-12)
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": "training/thresholds.py",
            "config": asdict(self.config),
            "species": {c: asdict(s) for c, s in sorted(self.species.items())},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _precision_scan(scores: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each distinct judged score ``t`` (ascending): precision and right count among ``≥ t``."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], correct[order]
    cum_right = np.cumsum(y)
    n = np.arange(1, len(s) + 1)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    t, prec, right = s[last], cum_right[last] / n[last], cum_right[last]
    return t[::-1], prec[::-1], right[::-1]


def fit_species(code: str, scores: ArrayLike, correct: ArrayLike, cfg: ThresholdConfig) -> SpeciesThreshold:
    """The rule of the module docstring for one species."""
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(correct).ravel()
    if s.shape != y.shape:
        raise TrainingError(f"{code}: {s.size} scores but {y.size} verdicts")
    if not np.all(np.isfinite(s)) or (s.size and (s.min() < 0 or s.max() > 1)):
        raise TrainingError(f"{code}: scores must be probabilities in [0, 1]")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise TrainingError(f"{code}: verdicts must be booleans (right / wrong)")
        y = y.astype(bool)
    n, n_right = int(s.size), int(y.sum())
    t0 = cfg.default_threshold

    def at(t: float) -> tuple[float | None, int]:
        m = s >= t
        return (float(y[m].mean()) if m.any() else None), int((y & m).sum())

    if n < cfg.min_verdicts:
        p, k = at(t0)
        return SpeciesThreshold(
            code, n, n_right, None, t0, p, k, f"{n} verdicts < {cfg.min_verdicts}: default"
        )
    ts, prec, _ = _precision_scan(s, y)
    ok = np.flatnonzero(prec >= cfg.target_precision - 1e-12)
    if ok.size:
        raw = float(ts[ok[0]])
        why = f"lowest score with precision ≥ {cfg.target_precision} on the verdicts"
    else:
        raw = float(s[~y].max()) + cfg.margin
        why = f"no score reaches precision {cfg.target_precision}: above the highest wrong score"
    w = n / (n + cfg.prior_verdicts)
    t = float(np.clip(t0 + w * (raw - t0), cfg.min_threshold, cfg.max_threshold))
    p, k = at(t)
    return SpeciesThreshold(code, n, n_right, raw, t, p, k, f"{why}; shrunk by {w:.2f} towards {t0}")


def fit_thresholds(
    scores: Mapping[str, ArrayLike],
    correct: Mapping[str, ArrayLike],
    cfg: ThresholdConfig = ThresholdConfig(),
    *,
    known: frozenset[str] | set[str] | None = None,
) -> ThresholdFit:
    """Per-species thresholds from verdicts: ``scores[code]`` the model's scores for ``code`` on
    its judged detections (``[n] float``), ``correct[code]`` whether each was right (``[n] bool``).
    ``known``: the label space's codes (an unknown code is an error). Deterministic."""
    if set(scores) != set(correct):
        raise TrainingError(
            f"scores and verdicts name different species: {sorted(set(scores) ^ set(correct))}"
        )
    if known is not None:
        bad = sorted(set(scores) - set(known))
        if bad:
            raise TrainingError(f"unknown species codes {bad[:5]}")
    return ThresholdFit(cfg, {c: fit_species(c, scores[c], correct[c], cfg) for c in sorted(scores)})
