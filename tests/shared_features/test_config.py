from __future__ import annotations

import dataclasses

import pytest

from shared_features import (
    DEFAULT,
    EDGE,
    PANNS,
    FeatureConfig,
    FeatureConfigError,
    FingerprintMismatchError,
    check_fingerprint,
    get_preset,
)
from shared_features.config import FEATURE_VERSION


def test_defaults_are_the_documented_recipe():
    c = DEFAULT
    assert (c.sample_rate, c.window_seconds, c.n_fft, c.n_mels) == (32_000, 5.0, 2048, 128)
    assert c.hop_length == 500  # 64 frames/s: windows on 0.5 s boundaries share frames
    assert c.n_frames == 316 and c.window_samples == 160_000
    assert EDGE.frames_shareable and DEFAULT.frames_shareable


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT.n_mels = 64  # type: ignore[misc]


def test_roundtrip_and_fingerprint_stable():
    for cfg in (DEFAULT, EDGE, PANNS):
        again = FeatureConfig.from_dict(cfg.to_dict())
        assert again == cfg and again.fingerprint() == cfg.fingerprint()
        assert FeatureConfig.from_json(cfg.to_json()) == cfg
    assert DEFAULT.fingerprint().startswith(f"fv{FEATURE_VERSION}-")
    # A pinned value: changing the canonical form or hashing breaks every stored model.
    assert DEFAULT.fingerprint() == "fv1-153794d7cd933cca"


def test_fingerprint_tracks_numbers_not_stride_or_name():
    assert EDGE.fingerprint() == DEFAULT.fingerprint()
    assert DEFAULT.replace(name="x", window_stride_seconds=1.0).fingerprint() == DEFAULT.fingerprint()
    for change in (
        {"n_mels": 64},
        {"fmin": 0.0},
        {"hop_length": 320},
        {"top_db": None},
        {"normalization": "none"},
        {"sample_rate": 48_000, "fmax": 14000.0},
    ):
        assert DEFAULT.replace(**change).fingerprint() != DEFAULT.fingerprint(), change
    assert PANNS.fingerprint() != DEFAULT.fingerprint()


def test_from_dict_refuses_foreign_fingerprint_and_unknown_keys():
    d = DEFAULT.to_dict()
    d["fingerprint"] = "fv0-0000"
    with pytest.raises(FingerprintMismatchError, match="fv0-0000"):
        FeatureConfig.from_dict(d)
    d = DEFAULT.to_dict()
    d["colour"] = "blue"
    with pytest.raises(FeatureConfigError, match="colour"):
        FeatureConfig.from_dict(d)


def test_check_fingerprint():
    check_fingerprint(DEFAULT.fingerprint())
    with pytest.raises(FingerprintMismatchError, match="retrain"):
        check_fingerprint(PANNS.fingerprint(), DEFAULT)


@pytest.mark.parametrize(
    "bad",
    [
        {"sample_rate": 0},
        {"fmax": 20_000.0},
        {"fmin": 15_000.0},
        {"n_mels": 0},
        {"window_seconds": 0.01},
        {"log_scale": "ln"},
        {"normalization": "pcen"},
        {"power": 3.0},
    ],
)
def test_invalid_configs_name_the_value(bad):
    with pytest.raises(FeatureConfigError) as err:
        DEFAULT.replace(**bad)
    assert str(list(bad.values())[0]) in str(err.value) or list(bad)[0] in str(err.value)


def test_presets():
    assert get_preset("panns").n_mels == 64
    with pytest.raises(FeatureConfigError, match="nope"):
        get_preset("nope")
