"""The edge commands on a fresh ``$SILENCIO_HOME`` with no flags: ``listen`` through the real
MicrophoneSource over a fake sounddevice stream, errors printed once with exit code 2, ``export``
and ``status`` on an empty store."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

from edge.records import StartBasis
from edge.settings import EdgeSettings
from edge.store import open_store
from shared_features import DEFAULT, load_audio

from .conftest import FakeSoundDevice


def test_listen_with_no_flags_hears_the_microphone(mini, monkeypatch, capsys):
    from silencio.cli import main

    rate = 48_000  # the device cannot do 32 kHz: captured natively, resampled
    audio = load_audio(mini / "train_audio" / "cattyr" / "iNat854652.ogg", DEFAULT.replace(sample_rate=rate))
    fake = FakeSoundDevice(audio, rate=rate)
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    before = datetime.now(UTC)
    assert main(["edge", "listen", "--duration", "12"]) == 0
    out = capsys.readouterr().out
    assert "listening (BirdNET v2.4 zero-shot" in out and "Cattle Tyrant (Machetornis rixosa, Aves)" in out
    assert "overflows 0" in out and fake.opened >= 1
    st = open_store(EdgeSettings().db_path)
    (ts,) = st.tours()
    (rec, *_) = st.recordings(ts.tour.uuid)
    assert rec.source == "microphone" and rec.start_basis is StartBasis.CLOCK
    dets = st.detections(ts.tour.uuid)
    assert dets and all(datetime.fromisoformat(d.start_time) >= before for d in dets)  # live: the clock
    assert ts.tour.ended_at is not None and all(d.end_time <= ts.tour.ended_at for d in dets)


def test_errors_are_printed_once_with_exit_code_2(tmp_path, capsys):
    from silencio.cli import main

    assert main(["edge", "analyze", "--taxonomy", str(tmp_path / "nope.csv"), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and err.count("nope.csv does not exist") == 1 and err.endswith("\n")
    assert main(["edge", "tui", "--file", str(tmp_path / "missing.ogg")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "missing.ogg: no such recording" in err
    assert main(["edge", "analyze", "--start", "2023-04-20T07:40:00", str(tmp_path), str(tmp_path)]) == 1
    assert "a folder with no recordings" in capsys.readouterr().err


def test_export_status_and_clips_on_a_fresh_home(tmp_path, capsys):
    from silencio.cli import main

    for fmt in ("raven", "csv", "dwc"):
        assert main(["edge", "export", "--format", fmt, "--out", str(tmp_path / f"x.{fmt}")]) == 0
        assert "0 detections" in capsys.readouterr().out
    assert main(["edge", "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["integrity"] == "ok" and status["pending"]["detections"] == 0
    assert status["speech_suppressed"] == 0 and status["audio_paused"] is False and status["free_bytes"] > 0
    assert main(["edge", "clips", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
