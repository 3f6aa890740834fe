from __future__ import annotations

from pathlib import Path

import pytest

from training.synth import SynthConfig, generate

SMALL = SynthConfig(species=8, clips_per_species=4, clip_seconds=(5.0, 9.0), soundscapes=2, seed=7)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    generate(out, SMALL)
    return out
