from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest

from shared_features import LabelSpace, load_audio
from training.dataset import BirdCLEFDataset, read_solution_csv
from training.synth import SynthConfig, generate, make_species, render_call

from .conftest import SMALL


def test_layout_and_labels(synth_dir):
    ds = BirdCLEFDataset.load(synth_dir)
    assert len(ds.labels) == 8 and len(ds.recordings) == 32
    assert set(ds.labels.class_counts()) == {"Aves", "Amphibia", "Insecta", "Mammalia"}
    assert all(s.scientific_name.startswith("Synthetica") for s in ds.labels)
    assert "Synthetic audio, not real animals" in (synth_dir / "SYNTHETIC.md").read_text()
    header = (synth_dir / "train.csv").read_text().splitlines()[0].split(",")
    assert {"type", "url", "author", "license"} <= set(header)  # the full Kaggle columns
    for r in ds.recordings:
        y = load_audio(ds.audio_path(r))
        assert 4.9 <= y.size / 32_000 <= 9.1
    assert len(ds.soundscapes()) == 3  # 2 with published truth, 1 unlabelled


def test_unlabelled_soundscapes_have_only_hidden_truth(synth_dir):
    from training.distill import unlabelled_soundscapes

    unl = unlabelled_soundscapes(synth_dir)
    assert [p.name[:4] for p in unl] == ["SYNU"]
    labels = LabelSpace.from_taxonomy_csv(synth_dir / "taxonomy.csv")
    ids, _, _ = read_solution_csv(synth_dir / "soundscape_solution.csv", labels)
    assert not any(r.startswith("SYNU") for r in ids)
    hidden, _, _ = read_solution_csv(synth_dir / "hidden_truth" / "unlabelled_solution.csv", labels)
    assert len(hidden) == 12 and all(r.startswith(unl[0].stem) for r in hidden)


def test_soundscape_truth_matches_events(synth_dir):
    labels = LabelSpace.from_taxonomy_csv(synth_dir / "taxonomy.csv")
    ids, codes, y = read_solution_csv(synth_dir / "soundscape_solution.csv", labels)
    assert len(ids) == 24 and ids[0].endswith("_5") and ids[11].endswith("_60")
    with open(synth_dir / "soundscape_events.csv") as fh:
        events = list(csv.DictReader(fh))
    for e in events[:20]:
        a, b = float(e["start"]), float(e["end"])
        mid_window = int(((a + b) / 2) // 5) + 1
        rid = f"{e['soundscape']}_{mid_window * 5}"
        if b - a > 1.2 and rid in ids:  # half of it (≥ 0.6 s) lies in the middle window
            assert y[ids.index(rid), codes.index(e["primary_label"])] == 1
    assert 0 < y.mean() < 0.6


def test_deterministic(tmp_path):
    cfg = SynthConfig(species=4, clips_per_species=1, soundscapes=1, seed=3)
    generate(tmp_path / "a", cfg)
    generate(tmp_path / "b", cfg)
    for rel in ("train.csv", "soundscape_solution.csv", "taxonomy.csv"):
        assert (tmp_path / "a" / rel).read_text() == (tmp_path / "b" / rel).read_text()
    wa = sorted((tmp_path / "a" / "train_audio").rglob("*.ogg"))
    wb = sorted((tmp_path / "b" / "train_audio").rglob("*.ogg"))
    for x, y in zip(wa, wb):
        assert np.array_equal(load_audio(x), load_audio(y))
    h = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert h(tmp_path / "a" / "train.csv") == h(tmp_path / "b" / "train.csv")


def test_refuses_foreign_directory(tmp_path):
    (tmp_path / "thesis.tex").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        generate(tmp_path, SynthConfig(species=4, clips_per_species=1, soundscapes=1))


def test_species_share_bands_within_a_class():
    sp = make_species(40, np.random.default_rng(0))
    birds = [s for s in sp if s.taxon_class == "Aves"]
    overlaps = sum(1 for a in birds for b in birds if a is not b and a.f_lo < b.f_hi and b.f_lo < a.f_hi)
    assert overlaps > len(birds)  # not trivially separable by band alone
    for s in sp:
        x = render_call(s, np.random.default_rng(1))
        assert x.dtype == np.float32 and np.isfinite(x).all() and 0.99 <= np.abs(x).max() <= 1.0


def test_small_config_is_what_tests_use():
    assert SMALL.species == 8
