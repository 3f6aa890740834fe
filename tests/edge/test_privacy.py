"""Privacy: human speech never leaves the device and is never stored as audio. A real El Silencio
soundscape with a person speaking in it (espeak-ng, generated at test time, mixed at 0 dB SNR)
goes through ``edge analyze`` with every window a candidate clip
(``SILENCIO_EDGE_RANDOM_CLIP_RATE=1``): the windows with speech keep their detections but not their
audio, the count shows in ``edge status`` and in the sync's ``DeviceStatus``, and
``edge clips --json`` lists every stored clip (source, start, end, reason) — none of them overlaps
the speech, and the speech detector hears no one in any of them."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import soxr

from edge.speech import SileroSpeechGate
from shared_features import load_audio

SPEECH_AT = 7.0  # seconds into the recording where the guide starts talking


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    """A person speaking, ``[n] float32`` at 32 kHz (espeak-ng, Debian)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip(
            "espeak-ng is not installed, so no speech can be generated for the privacy test "
            "(Debian: apt-get install espeak-ng; scripts/bootstrap.sh installs it when run as root)"
        )
    out = tmp_path_factory.mktemp("speech") / "guide.wav"
    text = "Good morning everyone. Please stay on the trail and keep your voices low, we are listening for birds."
    subprocess.run([exe, "-s", "150", "-w", str(out), text], check=True, capture_output=True, timeout=60)
    x, sr = sf.read(out, dtype="float32")
    return soxr.resample(x, sr, 32_000).astype(np.float32)


def _mix(scape: np.ndarray, speech: np.ndarray, at: float) -> tuple[np.ndarray, float, float]:
    """``speech`` added at ``at`` s with the background's RMS (0 dB SNR); returns (mix, start, end)."""
    i = int(at * 32_000)
    y = scape.copy()
    bg = float(np.sqrt(np.mean(y[i : i + speech.size] ** 2)))
    gain = bg / float(np.sqrt(np.mean(speech**2)))
    y[i : i + speech.size] += gain * speech
    return np.clip(y, -1, 1), at, at + speech.size / 32_000


def test_speech_gate_hears_the_guide_and_not_the_forest(speech, mini):
    gate = SileroSpeechGate()
    scape = load_audio(mini / "train_soundscapes" / "H02_20230420_074000.ogg")
    for k in range(0, 60, 5):  # the forest alone, window by window
        assert not gate.has_speech(scape[k * 32_000 : (k + 5) * 32_000], 32_000), f"speech heard at {k} s"
    mix, _, _ = _mix(scape[:320_000], speech, 2.0)
    assert gate.has_speech(mix[64_000:224_000], 32_000)


def test_speech_windows_keep_detections_not_audio(speech, mini, tmp_path, monkeypatch, capsys):
    from edge.settings import EdgeSettings
    from edge.store import open_store
    from silencio.cli import main

    bird = load_audio(mini / "train_audio" / "cattyr" / "iNat854652.ogg")  # a Cattle Tyrant calls …
    mix, s0, s1 = _mix(np.concatenate([bird] * 4), speech, SPEECH_AT)  # … while the guide talks
    rec = tmp_path / "H02_20230420_074000.wav"
    sf.write(rec, mix, 32_000)
    monkeypatch.setenv("SILENCIO_EDGE_RANDOM_CLIP_RATE", "1")  # every window is a candidate clip
    assert main(["edge", "analyze", str(rec)]) == 0
    err = capsys.readouterr().err
    windows = int(err.split(" windows")[0].rsplit(" ", 1)[1])
    assert main(["edge", "clips", "--json"]) == 0
    clips = json.loads(capsys.readouterr().out)
    assert clips and all(c["source"] == rec.name and c["reason"] in ("random", "uncertain") for c in clips)
    for c in clips:
        assert c["end"] - c["start"] == pytest.approx(5.0)
        overlap = min(c["end"], s1) - max(c["start"], s0)
        assert overlap <= 0.25, f"a clip at {c['start']}–{c['end']} s holds {overlap:.1f} s of speech"
    gate = SileroSpeechGate()
    for c in clips:  # and the detector hears no one in what was kept
        assert not gate.has_speech(load_audio(c["path"]), 32_000)
    st = open_store(EdgeSettings().db_path)
    suppressed = windows - len(clips)
    assert suppressed >= int((s1 - s0) / 2.5)  # every window with a second or more of speech
    heard = [d for d in st.detections() if d.offset_start < s1 and d.offset_end > s0]
    assert "cattyr" in {d.species_code for d in heard}, "the detections in the speech windows were kept"
    assert main(["edge", "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["speech_suppressed"] == suppressed
    from edge.status import device_report

    assert device_report(st).wire()["speech_suppressed"] == suppressed
