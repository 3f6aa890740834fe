"""``silencio cloud analyze-archive``: real recordings from ../shared/data (linked, never copied)
plus generated bad files, scored by BirdNET v2.4 alone (the service's default with no trained
ensemble) through the same package runtime as the service."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from cloud.archive import ModelSpec, analyze_archive, recording_start, wav_declared_frames
from cloud.archive_output import DETECTION_COLUMNS, RAVEN_COLUMNS, SUMMARY_COLUMNS, ArchiveError
from shared_features import DEFAULT, frame_windows, load_audio
from shared_features.labels import DEFAULT_TAXONOMY
from tests.conftest import MINI, REPO, SHARED_DATA

AUDIO = MINI / "train_audio"
#: Real recordings in which BirdNET v2.4 hears its species clearly (p > 0.85), and a soundscape.
GOOD = {
    "S01/S01_20240315_061500.ogg": AUDIO / "cattyr" / "iNat854652.ogg",  # Cattle Tyrant, BirdCLEF-style name
    "S01/XC796964.ogg": AUDIO / "speowl1" / "XC796964.ogg",  # Spectacled Owl, 40 s, no time in the name
    "S02/20230420_074000.ogg": AUDIO / "y00678" / "XC379556.ogg",  # Crested Caracara, AudioMoth-style name
    "S02/H02_20230420_074000.ogg": MINI / "train_soundscapes" / "H02_20230420_074000.ogg",
}
THRESHOLD = 0.5


def spec() -> ModelSpec:
    return ModelSpec(None, Path(os.environ["SILENCIO_HOME"]), DEFAULT_TAXONOMY)


def make_archive(root: Path) -> Path:
    """Real recordings as symlinks, and every kind of bad file."""
    for rel, src in GOOD.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(src)
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.wav").write_bytes(b"")
    (bad / "notes.mp3").write_text("field notes, not audio\n")
    (bad / "corrupt.flac").write_bytes(b"fLaC" + np.random.default_rng(0).bytes(4000))
    sf.write(bad / "no_samples.wav", np.zeros(0, np.float32), 32_000)
    x, sr = sf.read(AUDIO / "strher" / "XC959507.ogg", dtype="float32")
    sf.write(bad / "full.flac", x, sr)
    flac = (bad / "full.flac").read_bytes()
    (bad / "full.flac").unlink()
    (bad / "truncated.flac").write_bytes(flac[: len(flac) // 3])
    sf.write(bad / "truncated.wav", x, sr, subtype="PCM_16")
    wav = (bad / "truncated.wav").read_bytes()
    (bad / "truncated.wav").write_bytes(wav[: len(wav) // 2])  # the header still declares all of it
    (root / "README.txt").write_text("not a recording: ignored\n")
    (root / ".hidden.wav").write_text("hidden files are skipped\n")
    return root


BAD = {
    "bad/empty.wav": ("failed", "EmptyAudioError"),
    "bad/notes.mp3": ("failed", "UnsupportedFormatError"),
    "bad/corrupt.flac": ("failed", "AudioDecodeError"),
    "bad/no_samples.wav": ("failed", "EmptyAudioError"),
    "bad/truncated.flac": ("failed", "AudioDecodeError"),
    "bad/truncated.wav": ("partial", "Truncated"),
}


def read_csv(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter=delimiter))


def rows_of(out: Path) -> list[tuple]:
    t = pq.read_table(out / "detections.parquet").to_pylist()
    return sorted((r["file"], r["start_s"], r["code"], r["probability"], r["recorded_at"]) for r in t)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """One local run through the command line (``silencio cloud analyze-archive``)."""
    from silencio.cli import main

    root = make_archive(tmp_path_factory.mktemp("archive"))
    out = tmp_path_factory.mktemp("out") / "analysis"
    rc = main(["cloud", "analyze-archive", str(root), "--out", str(out), "--threshold", str(THRESHOLD),
               "--no-progress"])  # fmt: skip
    assert rc == 0
    return root, out


def test_outputs_have_the_columns_and_the_species(local_run):
    root, out = local_run
    for name in ("detections.parquet", "detections.csv", "summary.csv", "summary.md", "failed.csv",
                 "manifest.jsonl", "run.json"):  # fmt: skip
        assert (out / name).is_file(), name
    table = pq.read_table(out / "detections.parquet")
    assert tuple(table.column_names) == DETECTION_COLUMNS
    rows = table.to_pylist()
    csv_rows = read_csv(out / "detections.csv")
    assert len(csv_rows) == len(rows) > 0 and tuple(csv_rows[0]) == DETECTION_COLUMNS
    assert all(r["probability"] >= THRESHOLD for r in rows)
    by_code = {r["code"]: r for r in rows}
    # BirdNET hears the three birds in their own recordings, named by code, names and class
    cattyr = by_code["cattyr"]
    assert (cattyr["file"], cattyr["scientific_name"], cattyr["common_name"], cattyr["taxon_class"]) == (
        "S01/S01_20240315_061500.ogg", "Machetornis rixosa", "Cattle Tyrant", "Aves")  # fmt: skip
    assert by_code["speowl1"]["file"] == "S01/XC796964.ogg"
    assert by_code["speowl1"]["common_name"] == "Spectacled Owl"
    assert by_code["y00678"]["file"] == "S02/20230420_074000.ogg"
    assert by_code["y00678"]["scientific_name"] == "Caracara plancus"
    for r in rows:
        dur = sf.info(root / r["file"]).duration
        assert 0 <= r["start_s"] < r["end_s"] <= dur + 1e-3 and r["start_s"] % 5 == 0
        start = recording_start(r["file"])
        if start is None:
            assert r["recorded_at"] is None
        else:  # recording time = the time in the file name + the window's offset
            assert r["recorded_at"] == start + timedelta(seconds=r["start_s"])
    assert {r["file"] for r in rows} <= set(GOOD) | {"bad/truncated.wav"}
    assert not any(r["file"].startswith(".") or r["file"] == "README.txt" for r in rows)


def test_bad_files_are_listed_not_fatal(local_run):
    root, out = local_run
    failed = {r["file"]: r for r in read_csv(out / "failed.csv")}
    assert set(failed) == set(BAD)
    for rel, (status, error) in BAD.items():
        assert (failed[rel]["status"], failed[rel]["error"]) == (status, error), failed[rel]
        assert failed[rel]["reason"]
    assert "0 bytes" in failed["bad/empty.wav"]["reason"]
    assert "not a supported audio container" in failed["bad/notes.mp3"]["reason"]
    # the truncated WAV: its header declares twice what is there; the part that is there is analysed
    tw = failed["bad/truncated.wav"]
    assert float(tw["seconds_analysed"]) > 0
    assert float(tw["seconds_declared"]) == pytest.approx(2 * float(tw["seconds_analysed"]), rel=0.01)
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {m["file"] for m in manifest} == set(GOOD) | set(BAD)
    assert all(m["status"] == "done" for m in manifest if m["file"] in GOOD)
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["birdnet_only"] and run["threshold"] == THRESHOLD
    assert run["totals"]["files_failed"] == 5 and run["totals"]["files_partial"] == 1


def test_summary_and_raven_tables_agree_with_the_detections(local_run):
    root, out = local_run
    rows = pq.read_table(out / "detections.parquet").to_pylist()
    summary = read_csv(out / "summary.csv")
    assert tuple(summary[0]) == SUMMARY_COLUMNS
    assert {s["code"] for s in summary} == {r["code"] for r in rows}
    for s in summary:
        mine = [r for r in rows if r["code"] == s["code"]]
        assert int(s["detections"]) == len(mine)
        assert int(s["files"]) == len({r["file"] for r in mine})
        assert float(s["max_probability"]) == pytest.approx(max(r["probability"] for r in mine), abs=1e-4)
        times = [r["recorded_at"] for r in mine if r["recorded_at"] is not None]
        assert s["first_heard"] == (min(times).isoformat() if times else "")
        assert s["last_heard"] == (max(times).isoformat() if times else "")
    cattyr = next(s for s in summary if s["code"] == "cattyr")
    assert cattyr["first_heard"].startswith("2024-03-15T06:15")
    md = (out / "summary.md").read_text()
    assert "Cattle Tyrant" in md and "*Machetornis rixosa*" in md and "BirdNET v2.4 only" in md
    # one Raven selection table per analysed file, a row per detection
    for rel in [*GOOD, "bad/truncated.wav"]:
        table = read_csv(out / "raven" / f"{rel}.Table.1.selections.txt", delimiter="\t")
        mine = sorted((r for r in rows if r["file"] == rel), key=lambda r: (r["start_s"], -r["probability"]))
        assert len(table) == len(mine)
        for sel, r in zip(table, mine):
            assert tuple(sel) == RAVEN_COLUMNS
            assert sel["Begin File"] == Path(rel).name and Path(sel["Begin Path"]) == root / rel
            assert float(sel["File Offset (s)"]) == float(sel["Begin Time (s)"]) == r["start_s"]
            assert sel["Species Code"] == r["code"] and sel["Common Name"] == r["common_name"]
    assert not (out / "raven" / "bad" / "empty.wav.Table.1.selections.txt").exists()


def test_resume_skips_finished_files(local_run, tmp_path):
    import shutil

    root, first = local_run
    out = tmp_path / "analysis"
    shutil.copytree(first, out)
    before = rows_of(out)
    again = analyze_archive(root, out, spec(), threshold=THRESHOLD)
    assert (again.files_skipped, again.files_done, again.files_failed) == (len(GOOD) + len(BAD), 0, 0)
    assert rows_of(out) == before
    # a new recording: only it is analysed; the old rows stay, once
    (root / "S03").mkdir()
    (root / "S03" / "XC796964_copy.ogg").symlink_to(GOOD["S01/XC796964.ogg"])
    try:
        third = analyze_archive(root, out, spec(), threshold=THRESHOLD)
        assert (third.files_skipped, third.files_done) == (len(GOOD) + len(BAD), 1)
        new = [r for r in rows_of(out) if r[0] == "S03/XC796964_copy.ogg"]
        assert new and sorted(rows_of(out)) == sorted(before + new)
    finally:
        (root / "S03" / "XC796964_copy.ogg").unlink()
        (root / "S03").rmdir()
    # other parameters into the same folder: refused, nothing changed
    with pytest.raises(ArchiveError, match="threshold"):
        analyze_archive(root, out, spec(), threshold=0.3)


def test_a_killed_run_resumes(local_run, tmp_path):
    """SIGKILL a real run after its first files are recorded; the next run finishes the rest and
    the tables hold every row exactly once (equal to an uninterrupted run's)."""
    root, full = local_run
    archive = tmp_path / "archive"
    archive.mkdir()
    for k in range(8):  # 8 × 40 s of real audio: several seconds of work to interrupt
        (archive / f"owl_{k}.ogg").symlink_to(GOOD["S01/XC796964.ogg"])
    out = tmp_path / "analysis"
    code = (
        "import sys; from pathlib import Path; from cloud.archive import ModelSpec, analyze_archive; "
        "from shared_features.labels import DEFAULT_TAXONOMY; import os; "
        "analyze_archive(Path(sys.argv[1]), Path(sys.argv[2]), "
        "ModelSpec(None, Path(os.environ['SILENCIO_HOME']), DEFAULT_TAXONOMY), threshold=0.5, flush_seconds=0)"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(archive), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    manifest = out / "manifest.jsonl"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists() and manifest.read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    recorded = manifest.read_text().count("\n")
    assert 1 <= recorded < 8
    with open(manifest, "a") as fh:  # a line cut short by the kill is ignored
        fh.write('{"file": "owl_7.ogg", "si')
    (out / "parts" / "part-orphan-00001.parquet").write_bytes(b"written before the kill, never recorded")
    rep = analyze_archive(archive, out, spec(), threshold=0.5)
    assert rep.files_skipped == recorded and rep.files_done == 8 - recorded
    assert not (out / "parts" / "part-orphan-00001.parquet").exists()
    rows = rows_of(out)
    assert len(rows) == len(set(rows))  # nothing twice
    owl = [r[1:4] for r in rows_of(full) if r[0] == "S01/XC796964.ogg"]
    assert owl
    for k in range(8):
        assert [r[1:4] for r in rows if r[0] == f"owl_{k}.ogg"] == owl
    # the cut-short line is gone: the next run reads the manifest and has nothing left to do
    last = analyze_archive(archive, out, spec(), threshold=0.5)
    assert (last.files_skipped, last.files_done) == (8, 0) and rows_of(out) == rows


class _Scores:
    """A fake scorer for the decoding tests: class ``round(window mean * 1e4) % C`` scores 1."""

    def __init__(self, n_classes: int) -> None:
        self.n = n_classes

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        p = np.zeros((len(windows), self.n), np.float32)
        p[np.arange(len(windows)), self.expected(windows)] = 1.0
        return p

    def expected(self, windows: np.ndarray) -> np.ndarray:
        return np.round(np.abs(windows).mean(axis=1) * 1e4).astype(int) % self.n


def test_long_recording_in_segments_and_bounded_memory(tmp_path):
    """A 20-minute WAV cut into 2-minute segments gives exactly the windows of the whole file,
    and the analysis never holds the recording in memory (tracemalloc peak ≪ its 154 MB)."""
    from cloud.inference import Identifier

    archive = tmp_path / "archive"
    archive.mkdir()
    path = archive / "AM01_20240101_000000.wav"
    rng = np.random.default_rng(1)
    with sf.SoundFile(path, "w", 32_000, 1, "PCM_16") as f:
        for minute in range(20):
            t = np.arange(60 * 32_000) / 32_000
            amp = 0.05 + 0.4 * rng.random(12).repeat(5 * 32_000)  # a new level every 5 s
            f.write((amp * np.sin(2 * np.pi * (500 + 50 * minute) * t)).astype(np.float32))
    ident = Identifier.load(None, Path(os.environ["SILENCIO_HOME"]), DEFAULT_TAXONOMY)
    fake = _Scores(len(ident.labels))
    ident.score = fake
    tracemalloc.start()
    try:
        rep = analyze_archive(archive, tmp_path / "out", spec(), threshold=0.5, segment_seconds=120,
                              identifier=ident)  # fmt: skip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rep.files_done == 1 and rep.audio_hours == pytest.approx(1 / 3)
    assert peak < 60e6, f"peak {peak / 1e6:.0f} MB: the recording is held in memory"
    whole = load_audio(path, max_duration=None)
    windows, times = frame_windows(whole, DEFAULT)
    want = [(t.start, ident.labels[int(c)].code) for t, c in zip(times, fake.expected(windows))]
    got = sorted((r[1], r[2]) for r in rows_of(tmp_path / "out"))
    assert got == want and len(got) == 240
    start = datetime(2024, 1, 1)
    assert rows_of(tmp_path / "out")[-1][4] == start + timedelta(seconds=1195)


def test_recording_start_from_file_names():
    assert recording_start("H02_20230420_074000.ogg") == datetime(2023, 4, 20, 7, 40, 0)
    assert recording_start("20240315_061500.WAV") == datetime(2024, 3, 15, 6, 15, 0)
    assert recording_start("SMM07257_20240315_235959.wav") == datetime(2024, 3, 15, 23, 59, 59)
    assert recording_start("XC796964.ogg") is None
    assert recording_start("20241345_250000.wav") is None  # not a date


def test_wav_declared_frames(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros(32_000, np.float32), 32_000, subtype="PCM_16")
    assert wav_declared_frames(tmp_path / "a.wav") == 32_000
    assert wav_declared_frames(SHARED_DATA / "field_recordings" / "birds_10s.wav") == sf.info(
        SHARED_DATA / "field_recordings" / "birds_10s.wav").frames  # fmt: skip
    assert wav_declared_frames(GOOD["S01/XC796964.ogg"]) is None


def test_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ArchiveError, match="no such folder"):
        analyze_archive(tmp_path / "missing", tmp_path / "out", spec())
    with pytest.raises(ArchiveError, match="threshold"):
        analyze_archive(tmp_path, tmp_path / "out", spec(), threshold=0)
    monkeypatch.setitem(sys.modules, "ray", None)
    (tmp_path / "a.wav").symlink_to(GOOD["S02/20230420_074000.ogg"])
    with pytest.raises(ArchiveError, match=r"silencio\[train\]"):
        analyze_archive(tmp_path, tmp_path / "out", spec(), ray=True)


def two_member_ensemble(root: Path) -> Path:
    """An ensemble package of an *untrained* tiny ONNX CNN and BirdNET v2.4 (weights ½, ½): the
    shape of the cloud's ensemble for the plumbing, no accuracy implied."""
    from cloud.inference import birdnet_only_package
    from shared_features import LabelSpace
    from tests.conftest import tiny_edge_package

    pkg = tiny_edge_package(root / "tiny", LabelSpace.default(), version="t1")
    bn = json.loads((birdnet_only_package(root / "bn", DEFAULT_TAXONOMY) / "package.json").read_text())
    m = json.loads((pkg / "package.json").read_text())
    m.update(kind="ensemble", name="test-ensemble", version="t1")
    m["members"] = [{**m["members"][0], "weight": 0.5}, {**bn["members"][0], "weight": 0.5}]
    (pkg / "package.json").write_text(json.dumps(m))
    return pkg


@pytest.mark.slow
def test_ray_gives_the_same_rows_as_local(local_run, tmp_path):
    """Ray Data on a local cluster (2 CPUs, 2 actors) gives the local path's rows, failures and
    summary: with the default model (BirdNET alone) and with a two-member ensemble package
    (ONNX + BirdNET) given by --model."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("torch")
    root, local = local_run
    small = tmp_path / "small"
    small.mkdir()
    for rel in ("S01/S01_20240315_061500.ogg", "S02/20230420_074000.ogg"):
        (small / Path(rel).name).symlink_to(GOOD[rel])
    ens = ModelSpec(str(two_member_ensemble(tmp_path / "pkg")), spec().home, DEFAULT_TAXONOMY)
    ens_local = analyze_archive(small, tmp_path / "ens_local", ens, threshold=0.05)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)  # fmt: skip
    try:
        rep = analyze_archive(root, tmp_path / "ray", spec(), threshold=THRESHOLD, ray=True, workers=2)
        ens_ray = analyze_archive(small, tmp_path / "ens_ray", ens, threshold=0.05, ray=True, workers=2)
    finally:
        ray.shutdown()
    assert rep.ray and rep.files_done == len(GOOD) and rep.files_partial == 1 and rep.files_failed == 5
    out = tmp_path / "ray"
    assert rows_of(out) == rows_of(local)
    key = lambda r: r["file"]  # noqa: E731
    assert sorted(read_csv(out / "failed.csv"), key=key) == sorted(read_csv(local / "failed.csv"), key=key)
    assert read_csv(out / "summary.csv") == read_csv(local / "summary.csv")
    # the ensemble: both members ran in every actor, the same rows as locally
    assert ens_local.model["members"] == ens_ray.model["members"] == ["student", "birdnet"]
    assert not ens_local.model["birdnet_only"] and ens_ray.files_done == 2
    assert rows_of(tmp_path / "ens_ray") == rows_of(tmp_path / "ens_local") != []
