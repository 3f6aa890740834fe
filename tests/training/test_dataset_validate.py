from __future__ import annotations

import shutil

import pytest

from training.dataset import BirdCLEFDataset, read_solution_csv, read_train_csv, write_solution_csv
from training.errors import DatasetError
from training.validate import validate_dataset


def test_mini_dataset_reduced_columns(mini):
    ds = BirdCLEFDataset.load(mini)
    assert len(ds.recordings) == 32 and len(ds.labels) == 206
    greegr = next(r for r in ds.recordings if r.primary_label == "greegr")
    assert greegr.secondary_labels == ("socfly1",)
    assert ds.label_vector(greegr).sum() == 2
    assert [p.name for p in ds.soundscapes()] == ["H02_20230420_074000.ogg"]
    assert greegr.catalogue_id == "XC638749" and greegr.catalogue_number == 638749


def test_validate_mini(mini):
    rep = validate_dataset(mini)
    assert rep.usable and rep.n_recordings == 32 and rep.n_files_ok == 32
    assert not rep.bad_files and not rep.missing_files and not rep.unknown_labels
    assert rep.class_counts == {"Mammalia": 1, "Amphibia": 4, "Insecta": 1, "Aves": 26}
    assert {"32000", "44100", "100000"} <= set(rep.sample_rates)
    assert len(rep.species_without_recordings) == 206 - 24
    assert "Corrupt" not in rep.to_markdown()


def test_validate_lists_bad_files_without_crashing(tmp_path, synth_dir):
    ds_dir = tmp_path / "ds"
    shutil.copytree(synth_dir, ds_dir)
    recs = read_train_csv(ds_dir / "train.csv")
    (ds_dir / "train_audio" / recs[0].filename).unlink()  # missing
    (ds_dir / "train_audio" / recs[1].filename).write_bytes(b"OggS" + bytes(50))  # corrupt
    (ds_dir / "train_audio" / recs[2].filename).write_text("not audio")  # non-audio
    with open(ds_dir / "train.csv", "a") as fh:
        fh.write("class_97,[],class_97/XC1.ogg,XC,,,,,,x,y,,\n")
    rep = validate_dataset(ds_dir, workers=2)
    assert rep.usable
    assert recs[0].filename in " ".join(rep.missing_files)
    assert any("AudioDecodeError" in e for e in rep.bad_files.values())
    assert any("UnsupportedFormatError" in e for e in rep.bad_files.values())
    assert rep.unknown_labels == {"class_97": 1}
    md = rep.to_markdown()
    assert "class_97" in md and "Missing files" in md


def test_unusable(tmp_path):
    with pytest.raises(DatasetError, match="taxonomy.csv"):
        BirdCLEFDataset.load(tmp_path)
    with pytest.raises(DatasetError, match="not a directory"):
        BirdCLEFDataset.load(tmp_path / "nope")


def test_solution_roundtrip_and_errors(tmp_path, mini):
    import numpy as np

    ds = BirdCLEFDataset.load(mini)
    p = tmp_path / "sub.csv"
    s = np.random.default_rng(0).random((2, 206))
    write_solution_csv(p, ["H02_20230420_074000_5", "H02_20230420_074000_10"], s, ds.labels)
    ids, codes, arr = read_solution_csv(p, ds.labels)
    assert codes == ds.labels.codes and np.allclose(arr, s, atol=1e-5)
    p.write_text("row_id,a\nx,notanumber\n")
    with pytest.raises(DatasetError, match="sub.csv:2"):
        read_solution_csv(p)
    p.write_text("id,a\n")
    with pytest.raises(DatasetError, match="row_id"):
        read_solution_csv(p)
