"""Evaluation metrics on 5 s windows.

``birdclef_roc_auc`` is the BirdCLEF 2025 metric: the macro average over species of the ROC-AUC,
skipping species with no positive window (the competition's solution file has them all-zero).
Average precision is computed the same way. Both are implemented here with numpy (ties get the
average rank, as scikit-learn does) and tested against scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.errors import MetricError


def _check(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true)
    s = np.asarray(y_score, dtype=np.float64)
    if t.ndim == 1:
        t, s = t[:, None], s[:, None] if s.ndim == 1 else s
    if t.shape != s.shape or t.ndim != 2:
        raise MetricError(f"y_true {t.shape} and y_score {s.shape} must be equal [windows, species]")
    if t.shape[0] == 0:
        raise MetricError("no windows to score")
    if not np.all(np.isfinite(s)):
        raise MetricError(f"{int(np.count_nonzero(~np.isfinite(s)))} NaN/inf scores")
    return (t > 0.5), s


def _rankdata(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) with ties sharing their mean rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    boundaries = np.r_[0, np.flatnonzero(np.diff(xs)) + 1, xs.size]
    ranks = np.empty(x.size, np.float64)
    for a, b in zip(boundaries[:-1], boundaries[1:]):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return ranks


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Binary ROC-AUC (Mann–Whitney U). ``nan`` when a class has no positives or no negatives."""
    t = np.asarray(y_true) > 0.5
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _rankdata(np.asarray(y_score, np.float64))
    return float((r[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Binary AP as scikit-learn defines it: ``Σ (R_n − R_{n−1}) P_n`` over distinct thresholds."""
    t = np.asarray(y_true) > 0.5
    n_pos = int(t.sum())
    if n_pos == 0:
        return float("nan")
    s = np.asarray(y_score, np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(t)[last]
    fps = (last + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_class(y_true: np.ndarray, y_score: np.ndarray, fn=roc_auc) -> np.ndarray:  # type: ignore[no-untyped-def]
    t, s = _check(y_true, y_score)
    return np.array([fn(t[:, j], s[:, j]) for j in range(t.shape[1])])


def _macro(values: np.ndarray, name: str) -> float:
    ok = ~np.isnan(values)
    if not ok.any():
        raise MetricError(f"{name}: no species has a positive window (and a negative one)")
    return float(values[ok].mean())


def birdclef_roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """BirdCLEF 2025: macro ROC-AUC over species with ≥ 1 positive (and ≥ 1 negative) window."""
    return _macro(per_class(y_true, y_score, roc_auc), "macro ROC-AUC")


def macro_average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    return _macro(per_class(y_true, y_score, average_precision), "macro AP")


def top_k_accuracy(y_true: np.ndarray, y_score: np.ndarray, k: int = 1) -> float:
    """Over windows with at least one positive: the fraction whose top-k scores hold a positive."""
    t, s = _check(y_true, y_score)
    has = t.any(axis=1)
    if not has.any():
        raise MetricError("top-k accuracy: no window has a positive label")
    k = min(k, s.shape[1])
    top = np.argsort(-s[has], axis=1, kind="stable")[:, :k]
    hit = np.take_along_axis(t[has], top, axis=1).any(axis=1)
    return float(hit.mean())


@dataclass
class MetricReport:
    """Every figure of an evaluation, with the name of the data it was computed on."""

    data: str
    n_windows: int
    n_species_scored: int
    macro_roc_auc: float
    macro_ap: float
    top1: float | None
    top5: float | None
    per_species_auc: dict[str, float]
    per_species_ap: dict[str, float]
    per_class: dict[str, dict[str, float]]

    def as_flat_dict(self) -> dict[str, float]:
        d: dict[str, float] = {
            "macro_roc_auc": self.macro_roc_auc,
            "macro_ap": self.macro_ap,
            "n_windows": float(self.n_windows),
            "n_species_scored": float(self.n_species_scored),
        }
        if self.top1 is not None:
            d["top1"] = self.top1
        if self.top5 is not None:
            d["top5"] = self.top5
        for cls, m in self.per_class.items():
            for k, v in m.items():
                d[f"{cls}_{k}"] = v
        return d


def evaluate(
    y_true: np.ndarray, y_score: np.ndarray, codes: list[str], taxon_classes: list[str] | None, data: str
) -> MetricReport:
    """All metrics of the report. ``data`` must name what was scored (never tuned on)."""
    t, s = _check(y_true, y_score)
    auc = per_class(t, s, roc_auc)
    ap = per_class(t, s, average_precision)
    per_cls: dict[str, dict[str, float]] = {}
    if taxon_classes is not None:
        arr = np.array(taxon_classes)
        for cls in sorted(set(taxon_classes)):
            m = arr == cls
            a, p = auc[m], ap[m]
            if (~np.isnan(a)).any():
                per_cls[cls] = {
                    "roc_auc": float(np.nanmean(a)),
                    "ap": float(np.nanmean(p)),
                    "species_scored": float((~np.isnan(a)).sum()),
                }
    has_pos = t.any(axis=1).any()
    return MetricReport(
        data=data,
        n_windows=t.shape[0],
        n_species_scored=int((~np.isnan(auc)).sum()),
        macro_roc_auc=_macro(auc, "macro ROC-AUC"),
        macro_ap=_macro(ap, "macro AP"),
        top1=top_k_accuracy(t, s, 1) if has_pos else None,
        top5=top_k_accuracy(t, s, 5) if has_pos else None,
        per_species_auc={c: float(v) for c, v in zip(codes, auc) if not np.isnan(v)},
        per_species_ap={c: float(v) for c, v in zip(codes, ap) if not np.isnan(v)},
        per_class=per_cls,
    )
