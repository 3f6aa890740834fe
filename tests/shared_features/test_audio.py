"""Audio input and its documented errors, on files the tests make themselves."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile

from shared_features import (
    DEFAULT,
    AudioDecodeError,
    AudioTooLongError,
    AudioTooShortError,
    ClippedAudioError,
    EmptyAudioError,
    InvalidSamplesError,
    SilentAudioError,
    UnsupportedFormatError,
    audio_info,
    iter_audio_chunks,
    load_audio,
)

from ..conftest import tone


def write(path: Path, x: np.ndarray, sr: int, fmt: str | None = None, subtype: str | None = None) -> Path:
    soundfile.write(path, x, sr, format=fmt, subtype=subtype)
    return path


@pytest.mark.parametrize(
    "fmt,ext,subtype",
    [
        ("WAV", "wav", "PCM_16"),
        ("FLAC", "flac", None),
        ("OGG", "ogg", "VORBIS"),
        ("OGG", "opus", "OPUS"),
        ("MP3", "mp3", "MPEG_LAYER_III"),
    ],
)
def test_formats_decode_to_32k_mono(tmp_path, fmt, ext, subtype):
    x = tone(2.0, sr=48_000)
    p = write(tmp_path / f"a.{ext}", np.stack([x, x], axis=1), 48_000, fmt, subtype)
    y = load_audio(p)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(y.size - 64_000) <= 2_000  # codecs add a little delay/padding
    # the tone survives decoding and resampling: dominant frequency stays at 3 kHz
    spec = np.abs(np.fft.rfft(y[4000:36000]))
    assert abs(np.argmax(spec) * 32_000 / 32_000 - 3000) < 20


def test_bytes_and_file_objects(tmp_path):
    p = write(tmp_path / "a.wav", tone(1.0), 32_000)
    a = load_audio(p)
    assert np.array_equal(load_audio(p.read_bytes()), a)
    with open(p, "rb") as fh:
        assert np.array_equal(load_audio(fh), a)


@pytest.mark.parametrize("sr", [8_000, 22_050, 44_100, 96_000])
def test_resamples_any_rate(tmp_path, sr):
    y = load_audio(write(tmp_path / "a.wav", tone(1.0, sr=sr, freq=2000.0), sr))
    assert abs(y.size - 32_000) <= 1


def test_empty_file(tmp_path):
    (tmp_path / "e.wav").write_bytes(b"")
    with pytest.raises(EmptyAudioError, match="e.wav.*0 bytes"):
        load_audio(tmp_path / "e.wav")
    with pytest.raises(EmptyAudioError):
        load_audio(b"")


def test_zero_length_audio(tmp_path):
    p = write(tmp_path / "z.wav", np.zeros(0, np.float32), 32_000)
    with pytest.raises(EmptyAudioError, match="no samples"):
        load_audio(p)


def test_non_audio(tmp_path):
    (tmp_path / "notes.wav").write_text("these are field notes, not audio\n")
    with pytest.raises(UnsupportedFormatError, match="not a supported audio container"):
        load_audio(tmp_path / "notes.wav")
    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    with pytest.raises(UnsupportedFormatError, match="PNG"):
        load_audio(png)
    with pytest.raises(UnsupportedFormatError, match="directory"):
        load_audio(tmp_path)


def test_corrupt_and_truncated(tmp_path):
    p = write(tmp_path / "a.ogg", tone(3.0), 32_000, "OGG", "VORBIS")
    data = p.read_bytes()
    (tmp_path / "trunc.ogg").write_bytes(data[:60])  # header cut short
    with pytest.raises(AudioDecodeError, match="trunc.ogg"):
        load_audio(tmp_path / "trunc.ogg")
    bad = bytearray(data)
    bad[200:2000] = bytes(1800)  # a smashed page in the middle
    (tmp_path / "corrupt.ogg").write_bytes(bytes(bad))
    try:
        y = load_audio(tmp_path / "corrupt.ogg")
    except AudioDecodeError:
        pass  # the documented error
    else:  # libsndfile may resynchronise after a bad page: then the audio must be sane
        assert np.all(np.isfinite(y))
    wav = write(tmp_path / "a.wav", tone(3.0), 32_000).read_bytes()
    riff = b"RIFF" + bytes(40)
    with pytest.raises(AudioDecodeError):
        load_audio(riff)
    assert len(wav) > 44


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        load_audio(tmp_path / "nope.wav")


def test_too_short_and_too_long(tmp_path):
    p = write(tmp_path / "s.wav", tone(0.05), 32_000)
    with pytest.raises(AudioTooShortError, match="0.050 s"):
        load_audio(p)
    long = write(tmp_path / "l.wav", tone(3.0), 32_000)
    with pytest.raises(AudioTooLongError, match="iter_audio_chunks"):
        load_audio(long, max_duration=2.0)


def test_nan_samples(tmp_path):
    x = tone(1.0)
    x[100:110] = np.nan
    p = write(tmp_path / "nan.wav", x, 32_000, subtype="FLOAT")
    with pytest.raises(InvalidSamplesError, match="10 NaN"):
        load_audio(p)


def test_silent_loads_and_can_be_rejected(tmp_path):
    from shared_features import features_from_audio

    p = write(tmp_path / "silent.wav", np.zeros(64_000, np.float32), 32_000)
    y = load_audio(p)
    feats, _ = features_from_audio(y)
    assert np.all(np.isfinite(feats))
    with pytest.raises(SilentAudioError, match="silent"):
        load_audio(p, reject_silent=True)


def test_clipped_loads_and_can_be_rejected(tmp_path):
    x = np.clip(tone(1.0, amp=3.0), -1, 1)
    p = write(tmp_path / "clip.wav", x, 32_000, subtype="FLOAT")
    assert load_audio(p).size == 32_000
    with pytest.raises(ClippedAudioError, match="clipped"):
        load_audio(p, reject_clipped=True)


def test_audio_info(tmp_path):
    p = write(tmp_path / "a.flac", tone(2.0, sr=44_100), 44_100, "FLAC")
    info = audio_info(p)
    assert (info.format, info.sample_rate, info.channels) == ("flac", 44_100, 1)
    assert info.duration == pytest.approx(2.0)


def test_chunked_reader_matches_one_piece(tmp_path):
    x = tone(25.0, sr=44_100, freq=1500.0, seed=3)
    p = write(tmp_path / "long.flac", x, 44_100, "FLAC")
    whole = load_audio(p)
    chunks = list(iter_audio_chunks(p, DEFAULT, chunk_seconds=4.0))
    assert len(chunks) >= 6 and max(c.size for c in chunks) <= 4.0 * 32_000 + 2048
    joined = np.concatenate(chunks)
    assert abs(joined.size - whole.size) <= 2
    n = min(joined.size, whole.size)
    assert np.abs(joined[:n] - whole[:n]).max() < 1e-3


def test_chunked_reader_errors(tmp_path):
    (tmp_path / "x.ogg").write_bytes(b"hello")
    with pytest.raises(UnsupportedFormatError):
        list(iter_audio_chunks(tmp_path / "x.ogg"))
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros(0, np.float32), 32_000, format="WAV")
    with pytest.raises(EmptyAudioError):
        list(iter_audio_chunks(buf.getvalue()))


def test_chunked_reader_reads_a_part(tmp_path):
    """start/stop seconds: exactly those samples of a PCM file (seeking), nothing past the end."""
    x = np.random.default_rng(2).standard_normal(32_000 * 12).astype(np.float32) * 0.1
    p = write(tmp_path / "x.flac", x, 32_000, "FLAC", "PCM_24")
    whole = load_audio(p)
    part = np.concatenate(list(iter_audio_chunks(p, chunk_seconds=2.0, start_seconds=5.0, stop_seconds=10.0)))
    assert np.array_equal(part, whole[5 * 32_000 : 10 * 32_000])
    tail = np.concatenate(list(iter_audio_chunks(p, start_seconds=10.0)))
    assert np.array_equal(tail, whole[10 * 32_000 :])
    assert list(iter_audio_chunks(p, start_seconds=20.0)) == []
    with pytest.raises(ValueError, match="start_seconds"):
        list(iter_audio_chunks(p, start_seconds=5.0, stop_seconds=4.0))
    # a resampled source: a part from 0 is the one-piece decode's prefix
    p44 = write(tmp_path / "x44.flac", tone(12.0, sr=44_100, seed=4), 44_100, "FLAC")
    head = np.concatenate(list(iter_audio_chunks(p44, chunk_seconds=3.0, stop_seconds=6.0)))
    assert abs(head.size - 6 * 32_000) <= 2
    n = min(head.size, 6 * 32_000) - 64  # the stream's end is flushed at the part's end
    assert np.abs(head[:n] - load_audio(p44)[:n]).max() < 1e-3
