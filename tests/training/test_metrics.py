"""The metrics against scikit-learn and on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from training.errors import MetricError
from training.metrics import (
    average_precision,
    birdclef_roc_auc,
    evaluate,
    macro_average_precision,
    roc_auc,
    top_k_accuracy,
)


def sklearn_macro(y, s, fn):
    keep = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < y.shape[0]]
    return float(np.mean([fn(y[:, j], s[:, j]) for j in keep]))


@pytest.mark.parametrize("seed", range(8))
def test_matches_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(20, 300)), int(rng.integers(2, 30))
    y = (rng.random((n, k)) < rng.uniform(0.02, 0.4)).astype(int)
    s = rng.random((n, k))
    if seed % 2:
        s = np.round(s, 1)  # many ties
    assert birdclef_roc_auc(y, s) == pytest.approx(sklearn_macro(y, s, roc_auc_score), abs=1e-12)
    assert macro_average_precision(y, s) == pytest.approx(
        sklearn_macro(y, s, average_precision_score), abs=1e-12
    )


def test_species_without_positives_are_skipped():
    y = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 1], [0, 0, 0]])
    s = np.array([[0.9, 0.5, 0.1], [0.1, 0.9, 0.2], [0.8, 0.1, 0.7], [0.2, 0.3, 0.6]])
    # species 1 has no positive: skipped, not counted as 0 or 0.5
    assert birdclef_roc_auc(y, s) == pytest.approx((1.0 + 1.0) / 2)
    assert np.isnan(roc_auc(y[:, 1], s[:, 1]))


def test_ties_give_half_credit():
    assert roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5
    assert roc_auc(np.array([1, 0, 0, 1]), np.array([0.3, 0.3, 0.1, 0.9])) == pytest.approx(0.875)
    assert average_precision(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5


def test_single_window():
    y, s = np.array([[1, 0, 0]]), np.array([[0.2, 0.5, 0.1]])
    with pytest.raises(MetricError, match="no species"):
        birdclef_roc_auc(y, s)  # a single window has no negatives for the positive species
    assert top_k_accuracy(y, s, 1) == 0.0 and top_k_accuracy(y, s, 2) == 1.0


def test_perfect_and_inverted():
    y = np.eye(5)[np.arange(20) % 5]
    assert birdclef_roc_auc(y, y) == 1.0
    assert birdclef_roc_auc(y, 1 - y) == 0.0
    assert top_k_accuracy(y, y, 1) == 1.0


def test_bad_inputs():
    with pytest.raises(MetricError, match="must be equal"):
        birdclef_roc_auc(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(MetricError, match="NaN"):
        birdclef_roc_auc(np.eye(2), np.array([[np.nan, 0], [0, 1]]))
    with pytest.raises(MetricError, match="no windows"):
        birdclef_roc_auc(np.zeros((0, 2)), np.zeros((0, 2)))


def test_evaluate_per_class():
    rng = np.random.default_rng(0)
    y = (rng.random((100, 4)) < 0.3).astype(int)
    s = y * 0.5 + rng.random((100, 4)) * 0.6
    rep = evaluate(y, s, ["a", "b", "c", "d"], ["Aves", "Aves", "Insecta", "Mammalia"], data="unit test")
    assert set(rep.per_class) == {"Aves", "Insecta", "Mammalia"}
    assert rep.per_class["Insecta"]["roc_auc"] == pytest.approx(rep.per_species_auc["c"])
    assert rep.data == "unit test" and 0.5 < rep.macro_roc_auc <= 1
