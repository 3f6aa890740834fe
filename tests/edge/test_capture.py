"""Sources: real recordings through FileSource and DirectorySource, and a fake sounddevice stream
feeding the real MicrophoneSource code (callback, overflow counting, lost device)."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest

from edge.capture import DirectorySource, FileSource, MicrophoneSource
from shared_features import DEFAULT, load_audio
from tests.conftest import MINI

from .conftest import FakeSoundDevice, FakeStatus

SOUNDSCAPE = MINI / "train_soundscapes" / "H02_20230420_074000.ogg"


def test_file_source_replays_a_real_recording_exactly():
    src = FileSource(SOUNDSCAPE, chunk_seconds=0.37)
    (seg,) = list(src.segments())
    got = np.concatenate(list(seg.chunks))
    name = seg.name
    assert seg.warning is None and seg.start_basis == "file_name"
    assert seg.started_at.isoformat() == "2023-04-20T07:40:00+00:00"  # H02_20230420_074000
    ref = load_audio(SOUNDSCAPE)
    assert name == SOUNDSCAPE.name and abs(got.size - ref.size) <= 64
    n = min(got.size, ref.size)
    assert np.abs(got[1000 : n - 1000] - ref[1000 : n - 1000]).max() < 1e-3
    assert -80 < src.stats.level_dbfs < 0 and src.stats.seconds == pytest.approx(60.0, abs=0.01)


def test_file_source_realtime_paces_like_a_microphone(tmp_path):
    import soundfile as sf

    x = (0.1 * np.random.default_rng(0).standard_normal(32_000)).astype(np.float32)
    sf.write(tmp_path / "one.wav", x, 32_000)
    src = FileSource(tmp_path / "one.wav", realtime=True, chunk_seconds=0.25)
    t = time.monotonic()
    for seg in src.segments():
        list(seg.chunks)
    assert time.monotonic() - t >= 0.7  # 1 s of audio, the first chunk is immediate


def test_directory_source_processes_each_new_recording_once(tmp_path):
    shutil.copy(SOUNDSCAPE, tmp_path / "a.ogg")
    (tmp_path / "notes.txt").write_text("not audio")
    src = DirectorySource(tmp_path, poll_seconds=0.05, idle_exit=0.6)
    names = []

    def late_copy():
        time.sleep(0.3)
        shutil.copy(MINI / "train_audio" / "amekes" / "iNat1222149.ogg", tmp_path / "b.ogg")

    threading.Thread(target=late_copy).start()
    for seg in src.segments():
        assert sum(c.size for c in seg.chunks) > 0
        names.append(seg.name)
    assert names == ["a.ogg", "b.ogg"]


def test_microphone_source_resamples_counts_overflows_and_survives_a_lost_device():
    rate = 48_000
    audio = load_audio(SOUNDSCAPE, DEFAULT.replace(sample_rate=rate))[: 6 * rate]
    sd = FakeSoundDevice(audio, rate=rate, lose_after=8, overflow_every=5, fail_opens=1)
    mic = MicrophoneSource(sd=sd, block_seconds=0.25, max_restarts=5)
    total = 0
    segs = 0
    for seg in mic.segments():
        segs += 1
        assert seg.started_at is None and seg.start_basis == "clock"  # live: the device clock
        total += sum(c.size for c in seg.chunks)
        if segs == 2:
            mic.stop()
    # one failed open, one lost device, then the whole recording again at 32 kHz
    assert sd.opened == 2 and mic.stats.restarts == 2 and segs == 2
    assert mic.stats.overflows >= 2
    assert total == pytest.approx(8 * 0.25 * 32_000 + 6 * 32_000, rel=0.02)


def test_microphone_queue_overflow_drops_and_counts_without_blocking():
    mic = MicrophoneSource(sd=FakeSoundDevice(np.zeros(10)), block_seconds=0.25, queue_seconds=1.0)
    for _ in range(10):
        mic._callback(np.zeros((8000, 1), np.float32), 8000, None, FakeStatus(False))
    assert mic.stats.dropped_chunks == 10 - mic._q.maxsize
