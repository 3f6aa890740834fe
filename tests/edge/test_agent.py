"""The agent over real and generated audio: commit-before-show, event merging, bands, thresholds,
budgeted sampling with eviction, and the guide's feedback."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from edge.agent import Agent
from edge.capture import FileSource
from edge.detector import band_of
from edge.settings import EdgeSettings

from .conftest import FakeScorer, tone_then_silence


def _file(tmp_path, x, name="a.wav"):
    sf.write(tmp_path / name, x, 32_000)
    return tmp_path / name


def test_detection_is_committed_before_it_is_shown_and_events_merge(tmp_path, labels, edge_settings):
    seen = []

    def on_detection(ev, info):
        row = agent.store.detection(ev.uuid)  # already in the database when the UI hears of it
        assert row is not None and row.species_code == ev.species.code
        seen.append(ev.species.code)

    agent = Agent(edge_settings, scorer=FakeScorer(labels), on_detection=on_detection, seed=0)
    tour = agent.start_tour("Ana", "Quebrada")
    # 12 s of calling, 10 s of silence, 6 s of calling: two events of species 0
    x = np.concatenate([tone_then_silence(12, 10), tone_then_silence(6, 4)])
    res = agent.run(FileSource(_file(tmp_path, x)))
    agent.end_tour()
    dets = sorted(agent.store.detections(tour), key=lambda d: d.offset_start)
    assert seen == [labels[0].code, labels[0].code] and res.detections == 2
    assert [d.species_code for d in dets] == [labels[0].code] * 2
    first, second = dets
    assert first.offset_start == 0.0 and first.offset_end >= 12.0 and first.closed
    assert second.offset_start >= 17.5 and first.band == "high"
    assert all(d.model_version == "fake-1" for d in dets)
    assert first.common_name == labels[0].common_name  # names are stored with the detection
    assert agent.store.tour(tour).ended_at is not None


def test_per_species_threshold_and_bands(tmp_path, labels, edge_settings):
    import json

    (tmp_path / "thr.json").write_text(json.dumps({labels[1].code: 0.15}))
    s = edge_settings.model_copy(update={"thresholds_file": tmp_path / "thr.json"})
    agent = Agent(s, scorer=FakeScorer(labels), seed=0)
    tour = agent.start_tour()
    agent.run(FileSource(_file(tmp_path, tone_then_silence(0, 10))))
    dets = agent.store.detections(tour)
    assert [d.species_code for d in dets] == [labels[1].code]  # 0.2 ≥ its own 0.15 threshold
    assert dets[0].band == "low"
    assert band_of(0.9) == "high" and band_of(0.7) == "medium" and band_of(0.3) == "low"


def test_uncertain_clips_of_a_species_are_paced_with_a_doubling_gap(tmp_path, labels, edge_settings):
    """A long stretch where one species stays near its threshold keeps its first uncertain clip, the
    next after uncertain_clip_gap_s seconds of audio, then after twice the previous wait, at most
    uncertain_clip_max_gap_s — not one per window; with uncertain_clips off, none."""
    s = edge_settings.model_copy(
        update={"threshold": 0.25, "uncertain_clip_gap_s": 10.0, "uncertain_clip_max_gap_s": 40.0}
    )
    agent = Agent(s, scorer=FakeScorer(labels), seed=0)
    agent.start_tour()
    noise = (0.01 * np.random.default_rng(1).standard_normal(120 * 32_000)).astype(np.float32)
    summary = agent.run(FileSource(_file(tmp_path, noise)))
    assert summary.windows > 40  # every one of them uncertain
    assert sorted(c.source_offset for c in agent.store.clips()) == [0.0, 10.0, 30.0, 70.0, 110.0]
    assert agent.sampler.stats.uncertain == 5
    assert [agent.sampler.uncertain_wait(k) for k in range(5)] == [0.0, 10.0, 20.0, 40.0, 40.0]
    # a new stream of audio starts the pacing again
    agent.run(FileSource(_file(tmp_path, noise[: 15 * 32_000], "b.wav")))
    assert sorted(c.source_offset for c in agent.store.clips() if c.source == "b.wav") == [0.0, 10.0]

    off = Agent(s.model_copy(update={"uncertain_clips": False}), scorer=FakeScorer(labels), seed=0)
    off.start_tour()
    off.run(FileSource(_file(tmp_path, noise[: 30 * 32_000], "c.wav")))
    assert off.sampler.stats.uncertain == 0


def test_uncertain_windows_are_sampled_within_budget_with_eviction(tmp_path, labels, edge_settings):
    s = edge_settings.model_copy(
        update={
            "threshold": 0.25,
            "tour_clip_budget_mb": 0.06,
            "total_clip_budget_mb": 0.2,
            "uncertain_clip_gap_s": 0.0,  # every uncertain window is a candidate: the budgets decide
        }
    )
    agent = Agent(s, scorer=FakeScorer(labels), seed=0)
    tour = agent.start_tour()
    noise = lambda sec, seed: (0.01 * np.random.default_rng(seed).standard_normal(int(sec * 32_000))).astype(
        np.float32
    )  # noqa: E731
    agent.run(FileSource(_file(tmp_path, noise(60, 0))))  # every window is uncertain; noise does not compress
    clips = agent.store.clips()
    assert clips and all(c.reason == "uncertain" for c in clips)
    assert agent.store.clip_bytes(tour) <= 60_000 and agent.sampler.stats.skipped_budget > 0
    assert agent.store.clip_bytes() <= 200_000
    for c in clips:  # compressed OGG that decodes back to a 5 s window
        y, sr = sf.read(c.path)
        assert sr == 32_000 and y.size == 160_000
        assert c.source == "a.wav" and c.duration_s == 5.0 and len(c.edge_top) == 3
    # once synced, old clips make room for new ones; unsynced ones are never evicted
    for c in clips:
        agent.store.mark_clip_synced(c.uuid)
    before = {c.uuid for c in clips}
    agent.sampler.tour_budget, agent.sampler.total_budget = 1_000_000, agent.store.clip_bytes() + 50_000
    agent.start_tour()
    agent.run(FileSource(_file(tmp_path, noise(20, 1), "b.wav")))
    assert agent.sampler.stats.evicted > 0
    evicted = [c for c in agent.store.clips(include_evicted=True) if c.evicted_at is not None]
    assert evicted and {e.uuid for e in evicted} <= before
    assert not any(__import__("pathlib").Path(e.path).exists() for e in evicted)


def test_feedback_flags_the_detection_audio(tmp_path, labels, edge_settings):
    agent = Agent(edge_settings, scorer=FakeScorer(labels), seed=0)
    tour = agent.start_tour()
    agent.run(FileSource(_file(tmp_path, tone_then_silence(8, 2))))
    det = agent.store.detections(tour)[0]
    out = agent.feedback(det.uuid, "wrong_species", labels[5].code)
    assert out["clip"]  # saved from the audio still in memory
    (clip,) = [c for c in agent.store.clips() if c.detection_uuid == det.uuid]
    assert clip.reason == "flagged" and clip.source == "a.wav" and clip.source_offset == det.offset_start
    assert clip.recorded_at == det.start_time  # timed by its detection, not when the guide judged it
    after = agent.store.detection(det.uuid)
    # the guide's verdict is its own field; the cloud's verdict (status) is untouched
    assert after.guide_verdict == "wrong_species" and after.status == "pending"
    assert agent.store.feedback_to_send() == []  # not sendable before its detection is synced
    assert agent.store.pending().feedback == 1
    import pytest

    with pytest.raises(ValueError, match="unknown species"):
        agent.feedback(det.uuid, "wrong_species", "class_97")


def test_birdnet_fallback_on_a_real_recording(tmp_path, edge_settings):
    from tests.conftest import MINI

    agent = Agent(edge_settings.model_copy(update={"threshold": 0.5}), seed=0)
    assert "BirdNET" in agent.scorer.description and "no trained package" in agent.scorer.description
    tour = agent.start_tour()
    res = agent.run(FileSource(MINI / "train_audio" / "cattyr" / "iNat854652.ogg"))
    codes = {d.species_code for d in agent.store.detections(tour)}
    assert res.windows >= 1 and "cattyr" in codes  # BirdNET names this Cattle Tyrant at 0.99


def test_exports(tmp_path, labels, edge_settings):
    from edge.exports import DWC_COLUMNS, RAVEN_COLUMNS, write_csv, write_dwc, write_raven

    agent = Agent(edge_settings, scorer=FakeScorer(labels), seed=0)
    tour = agent.start_tour("Ana")
    agent.run(FileSource(_file(tmp_path, tone_then_silence(8, 2))))
    rows = agent.store.export_rows(tour)
    assert write_raven(tmp_path / "r.txt", rows, labels) == 1
    head, line = (tmp_path / "r.txt").read_text().splitlines()
    assert head.split("\t") == RAVEN_COLUMNS and labels[0].scientific_name in line
    assert write_csv(tmp_path / "d.csv", rows, labels) == 1
    assert write_dwc(tmp_path / "o.csv", rows, labels, 6.6, -74.2) == 1
    import csv

    occ = next(csv.DictReader(open(tmp_path / "o.csv")))
    assert list(occ) == DWC_COLUMNS and occ["basisOfRecord"] == "MachineObservation"
    assert occ["scientificName"] == labels[0].scientific_name and occ["occurrenceID"].startswith("urn:uuid:")
    assert (occ["decimalLatitude"], occ["decimalLongitude"], occ["geodeticDatum"]) == (
        "6.6",
        "-74.2",
        "WGS84",
    )


def test_windows_where_detections_start_are_sampled_for_the_cloud(tmp_path, labels, edge_settings):
    """The cloud confirms a detection only through a clip of it: the window where an event starts is
    drawn at ``detection_clip_rate`` (here 1: all), linked to that event."""
    s = edge_settings.model_copy(update={"detection_clip_rate": 1.0})
    agent = Agent(s, scorer=FakeScorer(labels), seed=0)
    tour = agent.start_tour()
    agent.run(FileSource(_file(tmp_path, np.concatenate([tone_then_silence(6, 8)] * 4))))
    dets = agent.store.detections(tour)
    clips = agent.store.clips()
    assert len(dets) == 4 and len(clips) == 4  # one per event, none for the windows in between
    assert {c.detection_uuid for c in clips} == {d.uuid for d in dets}
    assert all(c.reason == "random" and c.source_offset == d.offset_start for c, d in zip(clips, dets))
    assert EdgeSettings().detection_clip_rate == 0.5  # the default: half of them, at random


class _Calls:
    """The store, counting the operations called on it."""

    def __init__(self, inner):
        self._inner, self.calls = inner, []

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*a, **kw):
            self.calls.append(name)
            return attr(*a, **kw)

        return call


_DETECTION_WRITES = {"add_detection", "extend_detection", "close_detection", "commit_window"}


def test_one_store_transaction_per_window_that_changed_and_none_otherwise(tmp_path, labels, edge_settings):
    from edge.store import open_store

    store = _Calls(open_store(edge_settings.db_path))
    agent = Agent(edge_settings, scorer=FakeScorer(labels), store=store, seed=0)
    agent.start_tour()
    store.calls.clear()
    quiet = agent.run(FileSource(_file(tmp_path, np.zeros(60 * 32_000, np.float32), "quiet.wav")))
    assert quiet.windows >= 20 and quiet.detections == 0
    assert not _DETECTION_WRITES & set(store.calls)  # no detection, no clip: no SQL per window
    assert set(store.calls) <= {"add_recording", "finish_recording"}
    store.calls.clear()
    loud = agent.run(FileSource(_file(tmp_path, tone_then_silence(20, 10), "call.wav")))
    agent.end_tour()
    assert loud.detections == 1
    # the event's start, its extensions and its end: one commit per window that changed it
    assert store.calls.count("commit_window") <= loud.windows
    assert not {"add_detection", "extend_detection"} & set(store.calls)
    (d,) = [d for d in agent.store.detections() if d.recording_uuid and d.offset_start == 0.0]
    assert d.closed and d.offset_end >= 20.0


def test_clips_are_written_off_the_detection_path(tmp_path, labels, edge_settings):
    import threading

    shown = threading.Event()

    class WaitingGate:
        """Hears no speech, but only after the detection was shown: on the detection path it would
        wait forever (here: fail after 30 s)."""

        threads: set[str] = set()
        waited: list[bool] = []

        def has_speech(self, samples, sr):
            self.threads.add(threading.current_thread().name)
            self.waited.append(shown.wait(30))
            return False

    s = edge_settings.model_copy(update={"detection_clip_rate": 1.0})
    gate = WaitingGate()
    agent = Agent(
        s, scorer=FakeScorer(labels), speech_gate=gate, on_detection=lambda ev, i: shown.set(), seed=0
    )
    agent.sampler.queue_clips = 1
    agent.start_tour()
    res = agent.run(FileSource(_file(tmp_path, tone_then_silence(12, 10))))
    # run() returns once every clip is written: nothing is left in the queue
    assert res.detections == 1 and gate.waited and all(gate.waited)
    assert gate.threads == {"clip-writer"}
    (clip,) = [c for c in agent.store.clips() if c.detection_uuid]
    assert clip.detection_uuid == agent.store.detections()[0].uuid


def test_a_failing_clip_writer_fails_the_run_after_the_detections_commit(tmp_path, labels, edge_settings):
    import pytest

    class BrokenGate:
        def has_speech(self, samples, sr):
            raise RuntimeError("VAD exploded")

    s = edge_settings.model_copy(update={"detection_clip_rate": 1.0})
    agent = Agent(s, scorer=FakeScorer(labels), speech_gate=BrokenGate(), seed=0)
    tour = agent.start_tour()
    with pytest.raises(RuntimeError, match="VAD exploded"):
        agent.run(FileSource(_file(tmp_path, tone_then_silence(12, 10))))
    assert len(agent.store.detections(tour)) == 1 and not agent.store.clips()


def test_window_samples_are_the_recordings_whatever_the_chunking(labels):
    from edge.detector import Detector

    x = np.random.default_rng(3).standard_normal(int(151.3 * 32_000)).astype(np.float32)
    for chunk in (4_000, 16_000, 3_000_000):  # 0.125 s, 0.5 s, and one piece longer than the ring
        det = Detector(FakeScorer(labels), keep_seconds=60.0)
        results = []
        for i in range(0, x.size, chunk):
            results += det.push(x[i : i + chunk])
        results += det.flush()
        assert len(results) == 60
        for r in results:
            a = round(r.window.start * 32_000)
            want = x[a : a + 160_000]
            np.testing.assert_array_equal(r.samples[: want.size], want)
            assert not r.samples[want.size :].any() and r.feats.shape == (128, 316)
        # the last minute is still held; older audio is not
        assert np.array_equal(det.audio(100.0, 105.0), x[3_200_000:3_360_000])
        assert det.audio(10.0, 15.0) is None
