"""Per-species thresholds from verdicts: the rule of training/thresholds.py on hand-made cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.errors import TrainingError
from training.thresholds import ThresholdConfig, fit_species, fit_thresholds

CFG = ThresholdConfig()  # target 0.9, default 0.5, min 3 verdicts, prior 10, margin 0.01


def test_two_verdicts_do_not_move_a_threshold():
    s = fit_species("a", [0.9, 0.95], [False, False], CFG)
    assert s.threshold == 0.5 and s.raw is None and "2 verdicts < 3" in s.reason
    # even allowed to count (min 1), two verdicts move it only a sixth of the way
    s = fit_species("a", [0.9, 0.95], [False, False], ThresholdConfig(min_verdicts=1))
    assert s.raw == pytest.approx(0.96)
    assert s.threshold == pytest.approx(0.5 + 2 / 12 * (0.96 - 0.5))


def test_all_wrong_moves_above_the_highest_wrong_score_shrunk_by_evidence():
    scores = [0.55, 0.6, 0.7, 0.8, 0.6, 0.65, 0.7, 0.75, 0.52, 0.58]  # 10 verdicts, all wrong
    s = fit_species("noise", scores, [False] * 10, CFG)
    assert s.raw == pytest.approx(0.81)
    assert s.threshold == pytest.approx(0.5 + 0.5 * (0.81 - 0.5))  # 10 / (10 + 10)
    assert s.precision_at_threshold == 0.0 and s.kept_correct == 0  # 0.75, 0.8 still above it


def test_lowest_score_that_meets_the_precision_target():
    # sorted by score: 0.55 wrong, 0.6 right, 0.62 wrong, then 10 right from 0.7 up
    scores = [0.55, 0.6, 0.62] + [0.7 + 0.02 * i for i in range(10)]
    right = [False, True, False] + [True] * 10
    s = fit_species("sp", scores, right, ThresholdConfig(prior_verdicts=0))
    # precision at 0.55: 11/13 = 0.846; at 0.6: 11/12 = 0.917 ≥ 0.9 → 0.6 (no shrinkage)
    assert s.raw == pytest.approx(0.6) and s.threshold == pytest.approx(0.6)
    assert s.precision_at_threshold == pytest.approx(11 / 12) and s.kept_correct == 11
    # a stricter target moves past the wrong 0.62
    s = fit_species("sp", scores, right, ThresholdConfig(prior_verdicts=0, target_precision=0.95))
    assert s.raw == pytest.approx(0.7) and s.precision_at_threshold == 1.0


def test_all_right_never_goes_below_the_evidence():
    s = fit_species("sp", [0.8, 0.9, 0.85, 0.95], [True] * 4, ThresholdConfig(prior_verdicts=0))
    assert s.raw == pytest.approx(0.8) and s.threshold == pytest.approx(0.8)
    # low-scoring right verdicts (a reviewer judged uncertain clips) lower it, shrunk
    s = fit_species("sp", [0.2, 0.25, 0.3, 0.22], [True] * 4, CFG)
    assert s.raw == pytest.approx(0.2) and s.threshold == pytest.approx(0.5 + 4 / 14 * (0.2 - 0.5))


def test_bounds_and_ties():
    s = fit_species("sp", [1.0] * 5, [False] * 5, ThresholdConfig(prior_verdicts=0))
    assert s.threshold == 0.99  # max_threshold, although raw = 1.01
    # ties: the verdicts at one score count together
    s = fit_species("sp", [0.7, 0.7, 0.7, 0.9], [True, False, True, True], ThresholdConfig(prior_verdicts=0))
    assert s.raw == pytest.approx(0.9)  # at 0.7: 3/4 < 0.9


def test_deterministic_and_order_free():
    rng = np.random.default_rng(3)
    scores = rng.uniform(0.3, 1.0, 40)
    right = scores + rng.normal(0, 0.2, 40) > 0.6
    a = fit_thresholds({"x": scores}, {"x": right})
    perm = rng.permutation(40)
    b = fit_thresholds({"x": scores[perm]}, {"x": right[perm]})
    assert a == b and a.to_json() == b.to_json()


def test_the_edge_file_lists_only_changed_species():
    fit = fit_thresholds(
        {"a": [0.9, 0.95], "b": [0.6, 0.62, 0.64, 0.66, 0.7]},
        {"a": [False, False], "b": [False] * 5},
        known={"a", "b", "c"},
    )
    assert set(fit.thresholds) == {"b"} and fit.thresholds["b"] > 0.5
    d = json.loads(fit.to_json())
    assert d["species"]["a"]["reason"].startswith("2 verdicts") and d["config"]["target_precision"] == 0.9


def test_bad_input_is_refused():
    with pytest.raises(TrainingError, match="unknown species"):
        fit_thresholds({"zz": [0.5]}, {"zz": [True]}, known={"a"})
    with pytest.raises(TrainingError, match="2 scores but 1"):
        fit_species("a", [0.5, 0.6], [True], CFG)
    with pytest.raises(TrainingError, match="probabilities"):
        fit_species("a", [1.5], [True], CFG)
    with pytest.raises(TrainingError, match="booleans"):
        fit_species("a", [0.5], [2], CFG)
    with pytest.raises(TrainingError, match="different species"):
        fit_thresholds({"a": [0.5]}, {"b": [True]})
    with pytest.raises(TrainingError):
        ThresholdConfig(target_precision=0)
