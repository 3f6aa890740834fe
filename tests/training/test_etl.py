from __future__ import annotations

import json
import shutil
import tracemalloc

import numpy as np
import pytest
import soundfile

from shared_features import DEFAULT, PANNS, count_windows, features_from_audio, load_audio
from training.dataset import BirdCLEFDataset
from training.errors import CacheError
from training.etl import FeatureCache, Job, prepare_cache, process_file


def test_prepare_synth_and_resume(tmp_path, synth_dir):
    out = tmp_path / "cache"
    m = prepare_cache(synth_dir, out, workers=2)
    ds = BirdCLEFDataset.load(synth_dir)
    expected = (
        sum(count_windows(load_audio(ds.audio_path(r)).size) for r in ds.recordings) + 3 * 12
    )  # 2 labelled + 1 unlabelled soundscape
    assert m["n_windows"] == expected and m["n_bad_files"] == 0 and m["resumed_files"] == 0
    assert m["fingerprint"] == DEFAULT.fingerprint() and len(m["dataset_fingerprint"]) == 32
    cache = FeatureCache(out, DEFAULT)
    assert len(cache) == expected and cache.labels == ds.labels
    # cached features are the shared_features features (float16 rounding)
    r = ds.recordings[3]
    ref, _ = features_from_audio(load_audio(ds.audio_path(r)))
    rows = [i for i, row in enumerate(cache.index) if row["recording"] == r.filename]
    got = np.stack([cache.features(i) for i in rows])
    assert got.shape == ref.shape and np.abs(got - ref).max() < 0.01
    assert cache.index[rows[0]]["primary_label"] == r.primary_label
    assert len(cache.rows("soundscape")) == 36  # labelled and unlabelled soundscapes
    # second run: everything reused, same result
    m2 = prepare_cache(synth_dir, out, workers=1)
    assert m2["resumed_files"] == m2["n_files"] and m2["n_windows"] == expected
    assert m2["dataset_fingerprint"] == m["dataset_fingerprint"]


def test_bad_files_are_skipped_and_reported(tmp_path, synth_dir):
    ds_dir = tmp_path / "ds"
    shutil.copytree(synth_dir, ds_dir)
    ds = BirdCLEFDataset.load(ds_dir)
    ds.audio_path(ds.recordings[0]).write_bytes(b"OggS" + bytes(30))
    ds.audio_path(ds.recordings[1]).unlink()
    m = prepare_cache(ds_dir, tmp_path / "c", workers=1, soundscapes=False)
    assert m["n_bad_files"] == 2
    assert any("AudioDecodeError" in v for v in m["bad_files"].values())
    assert m["n_files"] == len(ds.recordings) - 2


def test_refuses_other_features_unless_overwrite(tmp_path, synth_dir):
    out = tmp_path / "c"
    prepare_cache(synth_dir, out, limit=2, soundscapes=False)
    with pytest.raises(CacheError, match="--overwrite"):
        prepare_cache(synth_dir, out, PANNS, limit=2, soundscapes=False)
    m = prepare_cache(synth_dir, out, PANNS, limit=2, soundscapes=False, overwrite=True)
    assert m["fingerprint"] == PANNS.fingerprint()
    with pytest.raises(CacheError, match="differ"):
        FeatureCache(out, DEFAULT)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(CacheError, match="not empty"):
        prepare_cache(synth_dir, tmp_path / "other", limit=1)


def test_real_mini_dataset(tmp_path, mini):
    m = prepare_cache(mini, tmp_path / "c", workers=2)
    assert m["n_bad_files"] == 0 and m["n_files"] == 33
    cache = FeatureCache(tmp_path / "c")
    assert len(cache.rows("soundscape")) == 12
    snr = np.array([float(r["snr_db"]) for r in cache.index])
    assert np.isfinite(snr).all() and snr.max() > 3


def _peak_for(tmp_path, minutes: int) -> tuple[int, int]:
    sr = 16_000
    p = tmp_path / f"long{minutes}.flac"
    rng = np.random.default_rng(0)
    with soundfile.SoundFile(p, "w", sr, 1, format="FLAC") as f:
        for _ in range(minutes):
            f.write((0.05 * rng.standard_normal(60 * sr)).astype(np.float32))
    shard = tmp_path / f"shards{minutes}"
    shard.mkdir()
    tracemalloc.start()
    _, _, n, err = process_file(Job("soundscape", p.name, str(p), str(shard), DEFAULT.to_json()))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert err == ""
    meta = json.loads((shard / f"soundscape__{p.name}.json").read_text())
    assert meta["shape"] == [n, 128, 316]
    return n, peak


def test_long_recording_bounded_memory(tmp_path):
    n2, peak2 = _peak_for(tmp_path, 2)
    n12, peak12 = _peak_for(tmp_path, 12)
    assert (n2, n12) == (24, 144)
    # memory does not grow with the recording: 6x the audio, about the same peak
    assert peak12 < 1.25 * peak2, (peak2 / 1e6, peak12 / 1e6)
    assert peak12 < 12 * 60 * 32_000 * 4  # less than the whole recording at 32 kHz float32
