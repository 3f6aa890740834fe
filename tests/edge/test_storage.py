"""Storage safety: a corrupt database is moved aside (kept) and a fresh one started, never a crash
loop; below the free-space watermark audio pauses while detections keep committing; ENOSPC while
writing a clip, and a database that cannot grow (SQLITE_FULL), pause audio, keep every detection
(held in memory until the store takes it) and say so in the status."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil

import numpy as np
import pytest
import soundfile as sf

from edge.agent import Agent
from edge.capture import FileSource
from edge.errors import StorageFullError
from edge.records import Counter, NewDetection, NewTour
from edge.store import open_store

from .conftest import FakeScorer, tone_then_silence


def _file(tmp_path, x, name="a.wav"):
    sf.write(tmp_path / name, x, 32_000)
    return tmp_path / name


def _db_with_detections(tmp_path, labels, edge_settings):
    agent = Agent(edge_settings, scorer=FakeScorer(labels), seed=0)
    agent.run(FileSource(_file(tmp_path, np.concatenate([tone_then_silence(6, 8)] * 3))))
    agent.end_tour()
    n = len(agent.store.detections())
    agent.store.close()
    return edge_settings.db_path, n


@pytest.mark.parametrize("damage", ["pages", "header"])
def test_corrupt_database_is_moved_aside_and_a_fresh_one_started(tmp_path, labels, edge_settings, damage):
    db, n = _db_with_detections(tmp_path, labels, edge_settings)
    assert n == 3
    copy = tmp_path / "copy" / "edge" / "edge.db"  # a copy: the original stays for comparison
    copy.parent.mkdir(parents=True)
    shutil.copy(db, copy)
    blob = bytearray(copy.read_bytes())
    if damage == "pages":
        page = 4096
        for k in range(1, len(blob) // page):  # every b-tree page after the schema page
            blob[k * page : k * page + 64] = bytes(range(64))
    else:
        blob[:100] = b"this is no longer a SQLite header " * 3 + b"xx"
    copy.write_bytes(bytes(blob))

    store = open_store(copy)
    assert store.notice is not None and "moved to" in store.notice and "fresh database" in store.notice
    aside = [p for p in copy.parent.iterdir() if re.fullmatch(r"edge\.db\.corrupt-\d{8}T\d{6}Z", p.name)]
    assert aside and aside[0].read_bytes() == bytes(blob)  # kept, as it was, for recovery
    assert store.check() == "ok" and store.detections() == []
    store.start_tour(NewTour("after"))  # the fresh database works
    store.close()
    assert open_store(copy).notice is None  # the next start finds a healthy database: no loop
    assert open_store(db).detections().__len__() == 3  # the original was never touched

    # through the CLI, in its own process: one clear message, the command still works, exit 0
    import subprocess
    import sys

    from tests.conftest import REPO

    shutil.copy(aside[0], copy)
    env = {**os.environ, "SILENCIO_HOME": str(copy.parent.parent)}
    for attempt in range(2):
        proc = subprocess.run(
            [sys.executable, "-m", "silencio.cli", "edge", "status"],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["integrity"] == "ok"
        assert proc.stderr.count("failed its integrity check") == (1 if attempt == 0 else 0), proc.stderr
    assert (
        len([p for p in copy.parent.iterdir() if re.fullmatch(r"edge\.db\.corrupt-[0-9TZ]+(-\d+)?", p.name)])
        == 2
    )


def test_below_the_watermark_audio_pauses_and_detections_commit(
    tmp_path, labels, edge_settings, monkeypatch, capsys
):
    s = edge_settings.model_copy(update={"random_clip_rate": 1.0, "min_free_mb": 1e9})  # 1 PB: always below
    agent = Agent(s, scorer=FakeScorer(labels), seed=0)
    res = agent.run(FileSource(_file(tmp_path, np.concatenate([tone_then_silence(6, 8)] * 2))))
    agent.end_tour()
    assert res.detections == 2 and len(agent.store.detections()) == 2  # detections keep committing
    assert agent.store.clips() == [] and agent.sampler.stats.skipped_space >= 10
    rep = agent.report()
    assert rep.audio_paused and "watermark" in rep.audio_pause.reason and rep.free_bytes > 0
    wire = rep.wire()
    assert wire["audio_paused"] is True and wire["free_bytes"] == rep.free_bytes
    assert agent.store.counters()[Counter.CLIPS_SKIPPED_SPACE] == agent.sampler.stats.skipped_space
    # the status command shows it (another process would read it from the store the same way)
    from silencio.cli import main

    monkeypatch.setenv("SILENCIO_HOME", str(s.home))
    monkeypatch.setenv("SILENCIO_EDGE_MIN_FREE_MB", "1e9")
    capsys.readouterr()
    assert main(["edge", "status"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["audio_paused"] is True and "watermark" in out["audio_pause_reason"]
    assert out["free_bytes"] > 0 and out["free_space_watermark_bytes"] == int(1e15)
    # room again (a sane watermark): audio resumes by itself
    agent.sampler.min_free_bytes = 0
    agent.run(FileSource(_file(tmp_path, tone_then_silence(6, 4), "b.wav")))
    assert agent.store.clips() and agent.store.audio_pause() is None


def test_enospc_writing_a_clip_pauses_audio_and_keeps_detections(
    tmp_path, labels, edge_settings, monkeypatch
):
    import edge.sampler

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    s = edge_settings.model_copy(update={"random_clip_rate": 1.0, "min_free_mb": 0})
    agent = Agent(s, scorer=FakeScorer(labels), seed=0)
    monkeypatch.setattr(edge.sampler.os, "fsync", full)
    res = agent.run(FileSource(_file(tmp_path, np.concatenate([tone_then_silence(6, 8)] * 2))))
    assert res.detections == 2 and len(agent.store.detections()) == 2
    assert agent.store.clips() == [] and agent.store.audio_pause().reason == "disk full"
    assert not list(s.clip_dir.rglob("*.part"))  # no partial file left behind
    monkeypatch.undo()
    agent.run(FileSource(_file(tmp_path, tone_then_silence(6, 4), "b.wav")))
    assert agent.store.clips() and agent.store.audio_pause() is None


def test_a_full_database_holds_detections_until_it_takes_them(tmp_path, labels, edge_settings):
    """SQLITE_FULL (the database cannot grow; a full disk reads the same): the write rolls back, the
    agent holds the detection in memory, pauses audio, and shows it only once it is committed."""
    s = edge_settings.model_copy(update={"random_clip_rate": 1.0, "min_free_mb": 0})
    store = open_store(s.db_path)
    filler_tour = store.start_tour(NewTour("filler"))
    T = "2000-01-01T00:00:00.000+00:00"
    shown: list[str] = []
    windows = {"n": 0}

    def fill_up():
        store.db.execute("CREATE TABLE IF NOT EXISTS filler (x BLOB)")
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {pages + 2}")
        with pytest.raises(StorageFullError):
            for _ in range(10_000):
                with store.tx() as db:
                    db.execute("INSERT INTO filler VALUES (zeroblob(1000))")
        with pytest.raises(StorageFullError):  # and the room left in the detections' own pages
            for _ in range(10_000):
                store.add_detection(
                    NewDetection(filler_tour, "filler", T, T, 0.0, 1.0, 0.9, "high", "x" * 200)
                )

    def on_detection(ev, info):
        assert store.detection(ev.uuid) is not None  # committed before shown, even after a full disk
        shown.append(ev.uuid)
        if len(shown) == 1:
            fill_up()  # from here on nothing more fits

    held: list[int] = []

    def on_window(r, active):
        windows["n"] += 1
        held.append(len(agent._held))
        if windows["n"] == 30:  # room again (an operator freed space)
            store.db.execute("PRAGMA max_page_count = 1073741823")

    agent = Agent(
        s, scorer=FakeScorer(labels), store=store, on_detection=on_detection, on_window=on_window, seed=0
    )
    x = np.concatenate([tone_then_silence(6, 8)] * 6)  # six calls, 84 s: ~33 windows
    res = agent.run(FileSource(_file(tmp_path, x)))
    agent.end_tour()
    assert windows["n"] > 30 and max(held) >= 2  # detections waited in memory while the store was full
    stored = [d.uuid for d in store.detections() if d.tour_uuid != filler_tour]
    assert len(shown) == 6 and sorted(shown) == sorted(stored)  # all six kept, each shown once stored
    assert res.held == 0 and agent.sampler.stats.skipped_space > 0  # audio stopped while it was full
    # every event was closed once the store took it
    assert all(d.closed for d in store.detections() if d.tour_uuid != filler_tour)


def test_a_clip_that_cannot_be_kept_costs_no_speech_check_and_no_encoding(
    tmp_path, labels, edge_settings, monkeypatch
):
    """Space and budgets are checked before the speech gate and the encoder: on a long tour with a
    full budget (nothing synced to evict) or a disk below the watermark, candidates are counted as
    skipped without being listened to or encoded."""
    from edge.sampler import Sampler
    from edge.speech import NoSpeechGate

    calls = {"gate": 0, "encode": 0}

    class CountingGate(NoSpeechGate):
        def has_speech(self, samples, sr):
            calls["gate"] += 1
            return False

    encode = Sampler.encode

    def counting_encode(self, samples, sr):
        calls["encode"] += 1
        return encode(self, samples, sr)

    monkeypatch.setattr(Sampler, "encode", counting_encode)
    s = edge_settings.model_copy(update={"random_clip_rate": 1.0, "tour_clip_budget_mb": 0.1})
    agent = Agent(s, scorer=FakeScorer(labels), seed=0, speech_gate=CountingGate())
    tour = agent.start_tour()
    noise = (0.01 * np.random.default_rng(0).standard_normal(60 * 32_000)).astype(np.float32)
    res = agent.run(FileSource(_file(tmp_path, noise)))  # every window a candidate; noise does not compress
    kept = len(agent.store.clips())
    assert 0 < kept < res.windows and agent.store.clip_bytes(tour) <= 100_000
    assert agent.sampler.stats.skipped_budget == res.windows - kept
    # at most one candidate after the budget filled was gated and encoded (its real size decided)
    assert calls["gate"] <= kept + 1 and calls["encode"] <= kept + 1

    calls.update(gate=0, encode=0)
    agent.sampler.min_free_bytes = int(1e15)  # below the watermark from now on
    agent.start_tour()
    res = agent.run(FileSource(_file(tmp_path, noise[: 20 * 32_000], "b.wav")))
    assert calls == {"gate": 0, "encode": 0} and agent.sampler.stats.skipped_space == res.windows
    assert agent.store.audio_pause() is not None
