"""``edge analyze`` as an ecologist expects, and the exports that follow: files and folders
(recursive), a failed input fails the run and leaves no tour, a truncated recording is analysed
with a warning, recording start times from file names / --start / modification time (stored, with
where they came from), detection times = recording start + offset, events inside their tour,
Raven with Begin File / File Offset, Darwin Core with coordinates and recording-time eventDate."""

from __future__ import annotations

import csv
import io
import os
import shutil
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import soundfile as sf

from edge.agent import Agent
from edge.analyze import analyze
from edge.errors import InputError
from edge.recording import container_problem, parse_start, recording_start, time_from_name
from edge.records import StartBasis
from edge.store import open_store

from .conftest import FakeScorer, tone_then_silence

CATTYR = "train_audio/cattyr/iNat854652.ogg"  # BirdNET: Cattle Tyrant at 0.99


def _truncate(src, dst, frac):
    data = open(src, "rb").read()
    dst.write_bytes(data[: int(len(data) * frac)])
    return dst


def test_start_time_from_file_names_flag_and_mtime(tmp_path):
    assert time_from_name("H02_20230420_074000.ogg") == datetime(2023, 4, 20, 7, 40, tzinfo=UTC)
    assert time_from_name("20230421_060500.WAV") == datetime(2023, 4, 21, 6, 5, tzinfo=UTC)  # AudioMoth
    assert time_from_name("S_22_20230420_074000.flac") is not None  # site names may hold underscores
    assert time_from_name("H02_20231345_990000.ogg") is None  # digits, not a time
    assert time_from_name("iNat854652.ogg") is None
    bogota = time_from_name("H02_20230420_074000.ogg", "America/Bogota")
    assert bogota.astimezone(UTC) == datetime(2023, 4, 20, 12, 40, tzinfo=UTC)
    f = tmp_path / "rec.wav"
    sf.write(f, np.zeros(3200, np.float32), 32_000)
    os.utime(f, (1_700_000_000, 1_700_000_000))
    assert recording_start(f) == (datetime.fromtimestamp(1_700_000_000, UTC), StartBasis.MTIME)
    flag = parse_start("2024-01-02T03:04:05", "America/Bogota")
    assert recording_start(f, flag) == (flag, StartBasis.FLAG) and flag.utcoffset() == timedelta(hours=-5)
    with pytest.raises(InputError, match="ISO 8601"):
        parse_start("yesterday")
    with pytest.raises(InputError, match="time zone"):
        time_from_name("H02_20230420_074000.ogg", "Mars/Olympus")


def test_truncated_recordings_are_recognised(tmp_path, mini):
    scape = mini / "train_soundscapes" / "H02_20230420_074000.ogg"
    assert container_problem(scape) is None  # whole OGG: its last page ends the stream
    cut = _truncate(scape, tmp_path / "cut.ogg", 0.5)
    assert "truncated" in container_problem(cut)
    x = (0.1 * np.random.default_rng(0).standard_normal(32_000 * 4)).astype(np.float32)
    sf.write(tmp_path / "whole.wav", x, 32_000)
    assert container_problem(tmp_path / "whole.wav") is None
    cutw = _truncate(tmp_path / "whole.wav", tmp_path / "cut.wav", 0.6)
    assert "declares" in container_problem(cutw)


@pytest.mark.parametrize("fmt", ["OGG", "WAV", "FLAC"])
def test_a_truncated_file_is_analysed_with_a_warning(tmp_path, labels, edge_settings, fmt):
    sub = {"OGG": "VORBIS", "WAV": "PCM_16", "FLAC": "PCM_16"}[fmt]
    x = np.concatenate([tone_then_silence(6, 8)] * 3)  # three calls, 42 s
    whole = tmp_path / f"whole.{fmt.lower()}"
    sf.write(whole, x, 32_000, format=fmt, subtype=sub)
    cut = _truncate(whole, tmp_path / f"20230420_074000.{fmt.lower()}", 0.55)
    agent = Agent(edge_settings, scorer=FakeScorer(labels), seed=0)
    rep = analyze(agent, [cut])
    (r,) = rep.files
    assert r.ok and r.warning and "truncated" in r.warning + (r.recording.warning or "")
    assert r.recording.warning == r.warning and 10 < r.seconds < 30  # what decoded was kept
    assert len(r.detections) >= 1


def test_analyze_inputs_failures_times_and_tours(tmp_path, labels, edge_settings):
    rec = tmp_path / "rec"
    (rec / "site" / "deeper").mkdir(parents=True)
    sf.write(rec / "site" / "H02_20230420_074000.wav", np.concatenate([tone_then_silence(6, 8)] * 2), 32_000)
    sf.write(rec / "site" / "deeper" / "20230421_060000.wav", tone_then_silence(6, 4), 32_000)
    (rec / "site" / "notes.txt").write_text("field notes")  # not audio: not even tried
    (rec / "bad.ogg").write_text("this is not audio")  # looks like audio: tried, fails
    sf.write(rec / "empty.wav", np.zeros(0, np.float32), 32_000)
    (tmp_path / "empty").mkdir()
    every_window = edge_settings.model_copy(update={"random_clip_rate": 1.0})  # clips too
    agent = Agent(every_window, scorer=FakeScorer(labels), seed=0)
    rep = analyze(agent, [rec, tmp_path / "missing.wav", tmp_path / "empty"])
    errors = {r.path.name: r.error for r in rep.failed}
    assert set(errors) == {"bad.ogg", "empty.wav", "missing.wav", "empty"}
    assert "no such file or folder" in errors["missing.wav"] and "no recordings" in errors["empty"]
    assert "not a supported audio container" in errors["bad.ogg"]
    ok = {r.path.name: r for r in rep.files if r.ok}
    assert set(ok) == {"H02_20230420_074000.wav", "20230421_060000.wav"}
    tours = agent.store.tours()
    assert len(tours) == 2 and {t.tour.location for t in tours} == set(ok)  # no tour for a failed input
    a = ok["H02_20230420_074000.wav"]
    assert (
        a.recording.start_basis is StartBasis.FILE_NAME
        and a.recording.started_at == "2023-04-20T07:40:00.000+00:00"
    )
    assert a.recording.duration_s == 28.0
    for d in a.detections:  # recording time + offset, not the time of analysis
        start = datetime.fromisoformat(a.recording.started_at) + timedelta(seconds=d.offset_start)
        assert d.start_time == start.isoformat(timespec="milliseconds")
    for ts in tours:  # events never outlive their tour
        t = ts.tour
        for d in agent.store.detections(t.uuid):
            assert t.started_at <= d.start_time and d.end_time <= t.ended_at
            assert d.offset_end <= agent.store.recording(d.recording_uuid).duration_s
        assert t.ended_at.startswith("2023-04-2")  # the recording's end, not the time of analysis
    agent.sampler.drain()
    clips = agent.store.clips()
    assert len(clips) >= 3
    for c in clips:  # a clip is timed like its detections: recording time + offset
        started = datetime.fromisoformat(agent.store.recording(c.recording_uuid).started_at)
        assert c.recorded_at == (started + timedelta(seconds=c.source_offset)).isoformat(
            timespec="milliseconds"
        )
    with pytest.raises(InputError, match="one recording"):
        analyze(agent, [rec / "site"], start=datetime(2024, 1, 1, tzinfo=UTC))


def test_cli_analyze_with_no_flags_on_a_fresh_home(tmp_path, mini, capsys, monkeypatch):
    """The README's first edge command on a fresh $SILENCIO_HOME: the packaged taxonomy and BirdNET,
    folders, failures (exit 1, each error once, no tour), a truncated file's warning, then exports
    with no --taxonomy: Raven over all tours with Begin File/File Offset, Darwin Core with
    coordinates and recording-time eventDate."""
    from silencio.cli import main

    rec = tmp_path / "rec"
    (rec / "a").mkdir(parents=True)
    shutil.copy(mini / CATTYR, rec / "a" / "H02_20230420_074000.ogg")
    _truncate(mini / CATTYR, rec / "H02_20230420_080000.ogg", 0.75)  # 5.1 s of 7 s decode
    (rec / "bad.ogg").write_text("not audio")
    capsys.readouterr()
    rc = main(["edge", "analyze", str(rec), str(tmp_path / "missing.wav")])
    out = capsys.readouterr()
    assert rc == 1, out.err
    assert "model: BirdNET v2.4 zero-shot" in out.out and "Cattle Tyrant" in out.out
    assert out.err.count("missing.wav: no such file or folder") == 1
    assert out.err.count("bad.ogg: ") == 1 and "not a supported audio container" in out.err
    assert out.err.count("H02_20230420_080000.ogg: the file ends inside an Ogg page (truncated)") == 1
    assert "start 2023-04-20T07:40:00Z (file_name)" in out.err
    assert "2 of 4 inputs failed" in out.err
    st = open_store(tmp_path_home(monkeypatch) / "edge" / "edge.db")
    assert len(st.tours()) == 2
    dets = [d for d in st.detections() if d.species_code == "cattyr"]
    assert {st.recording(d.recording_uuid).source for d in dets} == {
        "H02_20230420_074000.ogg",
        "H02_20230420_080000.ogg",
    }
    for d in dets:  # the recording's time + offset
        start = datetime.fromisoformat(st.recording(d.recording_uuid).started_at) + timedelta(
            seconds=d.offset_start
        )
        assert d.start_time == start.isoformat(timespec="milliseconds") and d.start_time.startswith(
            "2023-04-20T"
        )

    assert main(["edge", "export", "--format", "raven", "--out", str(tmp_path / "all.txt")]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "all.txt").read_text()), delimiter="\t"))
    assert {r["Begin File"] for r in rows} == {"H02_20230420_074000.ogg", "H02_20230420_080000.ogg"}
    first = next(
        r for ts in st.tours() for r in st.recordings(ts.tour.uuid) if r.source.endswith("074000.ogg")
    )
    for r in rows:  # one timeline: the second recording continues where the first one ends
        file_start = 0.0 if r["Begin File"].endswith("074000.ogg") else first.duration_s
        assert float(r["Begin Time (s)"]) == pytest.approx(file_start + float(r["File Offset (s)"]), abs=0.06)
        assert r["Common Name"] and r["Status"] == "pending"
    assert (
        main(
            [
                "edge",
                "export",
                "--format",
                "dwc",
                "--lat",
                "6.6",
                "--lon",
                "-74.2",
                "--out",
                str(tmp_path / "o.csv"),
            ]
        )
        == 0
    )
    occ = list(csv.DictReader(open(tmp_path / "o.csv")))
    assert occ and all(o["decimalLatitude"] == "6.6" and o["decimalLongitude"] == "-74.2" for o in occ)
    assert all(
        o["eventDate"].startswith("2023-04-20T07:40") or o["eventDate"].startswith("2023-04-20T08:00")
        for o in occ
    )
    assert main(["edge", "tours"]) == 0 and "H02_20230420_074000.ogg" in capsys.readouterr().out


def tmp_path_home(monkeypatch):
    from pathlib import Path

    return Path(os.environ["SILENCIO_HOME"])
