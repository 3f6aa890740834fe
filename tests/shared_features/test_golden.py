"""Golden vectors: the default recipe's numbers are pinned. A change of the recipe must come
with a new FEATURE_VERSION and regenerated goldens (make_golden.py)."""

from __future__ import annotations

import numpy as np

from shared_features import DEFAULT, FEATURE_VERSION, log_mel

from .make_golden import GOLDEN, golden_input


def _golden():
    with np.load(GOLDEN) as g:
        return {k: g[k] for k in g.files}


def test_golden_input_is_reproducible():
    assert np.array_equal(_golden()["pcm"], golden_input())


def test_feature_version_matches_golden():
    g = _golden()
    assert int(g["feature_version"]) == FEATURE_VERSION, (
        "FEATURE_VERSION changed: regenerate the goldens with tests/shared_features/make_golden.py"
    )
    assert str(g["fingerprint"]) == DEFAULT.fingerprint(), (
        "the default FeatureConfig changed: bump FEATURE_VERSION and regenerate the goldens"
    )


def test_features_match_golden():
    g = _golden()
    feats = log_mel(g["pcm"].astype(np.float32) / 32768.0, DEFAULT)
    assert feats.shape == (DEFAULT.n_mels, DEFAULT.n_frames) == g["features"].shape
    diff = float(np.abs(feats - g["features"]).max())
    assert diff <= 1e-4, (
        f"features differ from the golden vectors by {diff}: the recipe changed. Bump "
        f"FEATURE_VERSION (now {FEATURE_VERSION}) and regenerate the goldens."
    )
