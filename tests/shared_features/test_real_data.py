"""Every real recording in ../shared/data decodes and gives the expected number of windows."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile

from shared_features import DEFAULT, audio_info, count_windows, features_from_audio, load_audio

from ..conftest import SHARED_DATA

AUDIO_EXT = {".ogg", ".wav", ".mp3", ".flac", ".opus"}
FILES = sorted(p for p in SHARED_DATA.rglob("*") if p.suffix.lower() in AUDIO_EXT)


def test_found_the_real_files():
    assert len(FILES) >= 39, FILES
    rates = {audio_info(p).sample_rate for p in FILES}
    # the real data spans 32–100 kHz (lower rates are covered by test_audio.py with 8 kHz files)
    assert {32_000, 44_100, 48_000} <= rates and max(rates) >= 96_000, rates
    assert {p.suffix.lower() for p in FILES} >= {".ogg", ".wav", ".mp3"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SHARED_DATA)))
def test_decodes_with_expected_windows(path: Path):
    info = audio_info(path)
    y = load_audio(path)
    # the decoded duration agrees with the header (MP3 headers are approximate)
    assert y.size / DEFAULT.sample_rate == pytest.approx(info.duration, abs=0.1)
    expected = count_windows(round(info.duration * DEFAULT.sample_rate))
    feats, wins = features_from_audio(y)
    assert abs(len(wins) - expected) <= (1 if info.format == "mp3" else 0)
    assert feats.shape[1:] == (128, 316) and feats.shape[0] == len(wins) >= 1
    assert (feats == feats).all()  # no NaN


def test_soundscape_is_twelve_windows(mini):
    y = load_audio(mini / "train_soundscapes" / "H02_20230420_074000.ogg")
    assert y.size == 60 * 32_000
    _, wins = features_from_audio(y)
    assert [w.end_second for w in wins] == list(range(5, 65, 5))


def test_header_agrees_with_soundfile(mini):
    p = mini / "train_audio" / "turvul" / "XC39894.wav"
    assert audio_info(p).channels == soundfile.info(p).channels == 2
