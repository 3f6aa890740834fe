from __future__ import annotations

import numpy as np
import pytest

from shared_features.ensemble import combine
from training.ensemble import fit_weights
from training.metrics import birdclef_roc_auc


def test_members_that_do_not_know_a_species_contribute_nothing():
    a = np.array([[0.9, 0.2, 0.4]])
    b = np.array([[0.1, 0.8, 0.0]])  # b does not know species 2: its 0.0 must not dilute a's 0.4
    out = combine([a, b], [np.array([1, 1, 1], bool), np.array([1, 1, 0], bool)], [1.0, 1.0])
    assert np.allclose(out, [[0.5, 0.5, 0.4]])
    nobody = combine([a], [np.array([1, 0, 1], bool)], [1.0])
    assert nobody[0, 1] == 0.0


def test_bad_weights():
    with pytest.raises(ValueError, match="≥ 0"):
        combine([np.zeros((1, 2))], [np.ones(2, bool)], [-1.0])
    with pytest.raises(ValueError, match="as many"):
        combine([np.zeros((1, 2))], [], [1.0])


def test_fitted_weights_prefer_the_informative_member():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 6)) < 0.2).astype(int)
    good = np.clip(y * 0.5 + rng.random(y.shape) * 0.6, 0, 1)
    noise = rng.random(y.shape)
    known = [np.ones(6, bool), np.ones(6, bool)]
    fw = fit_weights(y, [good, noise], known, trials=60)
    assert fw.weights[0] > 0.7
    assert fw.val_roc_auc >= max(fw.member_val_roc_auc) - 1e-9
    assert fw.val_roc_auc == pytest.approx(birdclef_roc_auc(y, combine([good, noise], known, fw.weights)))
