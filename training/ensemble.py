"""Fitting the ensemble weights on validation windows (never on test or soundscape data).

The weights maximise the validation macro ROC-AUC of :func:`shared_features.ensemble.combine`:
a seeded random search over the simplex (Dirichlet samples, plus every single member and the
uniform mix) followed by coordinate refinement. Ties go to the more uniform weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from shared_features.ensemble import combine
from training.errors import TrainingError
from training.metrics import birdclef_roc_auc


@dataclass
class FittedWeights:
    weights: list[float]
    val_roc_auc: float
    member_val_roc_auc: list[float]
    trials: int


def fit_weights(
    y_val: np.ndarray,
    probs: Sequence[np.ndarray],
    known: Sequence[np.ndarray],
    trials: int = 200,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> FittedWeights:
    """The best weights of ``trials`` seeded candidates and 3 rounds of coordinate refinement;
    ``progress(done, total)`` is called as candidates are scored. Deterministic for a seed."""
    m = len(probs)
    if m == 0:
        raise TrainingError("no members to ensemble")
    y = np.asarray(y_val) >= 0.5

    def score(w: np.ndarray) -> float:
        return birdclef_roc_auc(y, combine(probs, known, list(w)))

    singles = [score(np.eye(m)[i]) for i in range(m)]
    cands = [np.full(m, 1.0 / m), *np.eye(m)]
    rng = np.random.default_rng(seed)
    cands += list(rng.dirichlet(np.ones(m), size=max(0, trials - len(cands))))
    total = len(cands) + 3 * m * 4
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    best_w, best = cands[0], score(cands[0])
    tick()
    for w in cands[1:]:
        s = score(w)
        tick()
        if s > best + 1e-9:
            best_w, best = w, s
    for _ in range(3):  # coordinate refinement
        for i in range(m):
            for delta in (-0.1, -0.05, 0.05, 0.1):
                tick()
                w = best_w.copy()
                w[i] = max(0.0, w[i] + delta)
                if w.sum() == 0:
                    continue
                w = w / w.sum()
                s = score(w)
                if s > best + 1e-9:
                    best_w, best = w, s
    return FittedWeights([float(v) for v in best_w / best_w.sum()], best, singles, len(cands))
