from __future__ import annotations

import numpy as np
import pytest

from shared_features import LabelSpace
from training.dataset import read_solution_csv, write_solution_csv
from training.errors import DatasetError
from training.report import write_report


def _predictions(synth_dir, tmp_path, noise: float, seed: int = 0):
    labels = LabelSpace.from_taxonomy_csv(synth_dir / "taxonomy.csv")
    ids, _, y = read_solution_csv(synth_dir / "soundscape_solution.csv", labels)
    rng = np.random.default_rng(seed)
    s = np.clip(y * 0.6 + rng.random(y.shape) * noise, 0, 1)
    p = tmp_path / "pred.csv"
    write_solution_csv(p, ids, s, labels)
    return p, y, s


def test_report_with_plots(tmp_path, synth_dir):
    p, _, _ = _predictions(synth_dir, tmp_path, 0.7)
    out = tmp_path / "report"
    rep = write_report(p, synth_dir / "soundscape_solution.csv", out, data_name="synthetic seed 7")
    md = (out / "report.md").read_text()
    assert "synthetic seed 7" in md and "Nothing in this report was tuned" in md
    for png in ("per_species_ap.png", "score_distributions.png", "reliability.png", "per_class.png"):
        assert (out / png).stat().st_size > 5_000, png
        assert png in md
    assert 0.6 < rep.macro_roc_auc <= 1.0
    assert "Synthetica" in md  # species are named, never by index


def test_random_scores_are_about_half(tmp_path, synth_dir):
    labels = LabelSpace.from_taxonomy_csv(synth_dir / "taxonomy.csv")
    ids, _, y = read_solution_csv(synth_dir / "soundscape_solution.csv", labels)
    aucs = []
    for seed in range(20):
        s = np.random.default_rng(seed).random(y.shape)
        p = tmp_path / f"r{seed}.csv"
        write_solution_csv(p, ids, s, labels)
        rep = write_report(p, synth_dir / "soundscape_solution.csv", tmp_path / f"o{seed}")
        aucs.append(rep.macro_roc_auc)
    assert np.mean(aucs) == pytest.approx(0.5, abs=0.06)


def test_mismatched_rows_are_errors(tmp_path, synth_dir):
    p, _, _ = _predictions(synth_dir, tmp_path, 0.5)
    lines = p.read_text().splitlines()
    p.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DatasetError, match="no prediction"):
        write_report(p, synth_dir / "soundscape_solution.csv", tmp_path / "o")
