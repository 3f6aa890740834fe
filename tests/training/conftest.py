from __future__ import annotations

from pathlib import Path

import pytest

from training.synth import SynthConfig, generate

SMALL = SynthConfig(
    species=8, clips_per_species=4, clip_seconds=(5.0, 9.0), soundscapes=2, seed=7, unlabelled_soundscapes=1
)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    generate(out, SMALL)
    return out


@pytest.fixture(scope="session")
def synth_cache(synth_dir, tmp_path_factory) -> Path:
    from training.etl import prepare_cache

    out = tmp_path_factory.mktemp("synth_cache") / "cache"
    prepare_cache(synth_dir, out, workers=1)
    return out


#: Tiny variants of every member, so tests need no GPU and no minutes (timm's tiny models).
TINY = {
    "resnet50": {"timm_name": "resnet10t", "input_downsample": 4},
    "efficientnet_b0": {"timm_name": "efficientnet_b0", "input_downsample": 4},
    "cnn14_sed": {"sed_width": 4, "input_downsample": 2},
    "student": {"timm_name": "mobilenetv3_small_050", "input_downsample": 2},
}
