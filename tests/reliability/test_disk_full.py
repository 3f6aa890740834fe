"""A disk that fills and frees again and again: ENOSPC injected at random into the edge's clip writes
(about every other one, ≥ 100 times over a 8.4-minute recording with every window sampled) — every
detection is kept, no partial clip file is left, every stored clip is whole, audio pauses with a
clear reason while the disk is full and resumes by itself. (Single faults, a full database and the
watermark: ``tests/edge/test_storage.py``.)"""

from __future__ import annotations

import errno
import hashlib
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge.agent import Agent
from edge.capture import FileSource
from tests.edge.conftest import FakeScorer, tone_then_silence

CALLS = 36


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_enospc_on_random_clip_writes_keeps_every_detection(tmp_path, labels, edge_settings, monkeypatch):
    import edge.sampler

    s = edge_settings.model_copy(update={"random_clip_rate": 1.0, "min_free_mb": 0})
    agent = Agent(s, scorer=FakeScorer(labels), seed=0)
    rng = random.Random(7)
    injected = {"n": 0, "ok": 0}
    states: list[tuple[bool, str | None]] = []  # (this write failed, the pause reason after it)
    real_fsync = edge.sampler.os.fsync

    def flaky_fsync(fd: int) -> None:
        if rng.random() < 0.5:
            injected["n"] += 1
            states.append((True, None))
            raise OSError(errno.ENOSPC, "No space left on device")
        injected["ok"] += 1
        states.append((False, None))
        real_fsync(fd)

    monkeypatch.setattr(edge.sampler.os, "fsync", flaky_fsync)
    pauses: list[str | None] = []
    agent.on_window = lambda r, active: pauses.append(
        None if agent.sampler.paused is None else agent.sampler.paused.reason
    )
    path = tmp_path / "long.wav"
    sf.write(path, np.concatenate([tone_then_silence(6, 8)] * CALLS), 32_000)
    res = agent.run(FileSource(path))
    agent.end_tour()
    st = agent.store
    assert injected["n"] >= 100 and injected["ok"] >= 50, injected
    assert res.detections == CALLS and len(st.detections()) == CALLS  # every detection kept
    assert {d.closed for d in st.detections()} == {True}
    clips = st.clips()
    assert len(clips) == injected["ok"]  # a clip row for every write that reached the disk
    for c in clips:
        assert hashlib.sha256(Path(c.path).read_bytes()).hexdigest() == c.sha256
    assert not list(s.clip_dir.rglob("*.part"))  # no partial file left behind
    assert "disk full" in pauses and None in pauses  # paused with its reason, and resumed by itself
    last_failed = states[-1][0]
    assert (st.audio_pause() is not None) == last_failed
    if last_failed:
        assert st.audio_pause().reason == "disk full"
    print(f"\n{injected['n']} ENOSPC injected, {injected['ok']} clips written, {CALLS} detections kept")
