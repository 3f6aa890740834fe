"""How member scores become ensemble scores: the contract between training (which fits the
weights) and the cloud service (which applies them). Pure numpy.

Per species ``c``: ``p_c = Σ_m w_m·k_mc·p_mc / Σ_m w_m·k_mc`` where ``k_mc`` is 1 when member
``m`` knows species ``c`` (BirdNET knows only birds) — a member that does not know a species
contributes nothing to it. Where no member with positive weight knows a species, its score is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ENSEMBLE_VERSION = 1


def combine(probs: Sequence[np.ndarray], known: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``M × [n, C]`` member probabilities, ``M × [C]`` bool masks, ``M`` weights ≥ 0 → ``[n, C]``."""
    if not (len(probs) == len(known) == len(weights)) or not probs:
        raise ValueError(
            f"need as many members, masks and weights, got {len(probs)}, {len(known)}, {len(weights)}"
        )
    w = np.asarray(weights, np.float64)
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"weights must be finite and ≥ 0, got {list(weights)}")
    shape = probs[0].shape
    num = np.zeros(shape, np.float64)
    den = np.zeros(shape[-1], np.float64)
    for p, k, wm in zip(probs, known, w):
        if p.shape != shape:
            raise ValueError(f"member scores {p.shape} differ from {shape}")
        km = np.asarray(k, bool).astype(np.float64) * wm
        num += p * km
        den += km
    out = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return out.astype(np.float32)
