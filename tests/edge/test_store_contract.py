"""One contract suite for the edge store protocol (``edge.store.Store``), run against every
implementation: SQLite (``EdgeStore``, via ``open_store``) and in-memory (``MemoryStore``). Same
operations, same typed results, same one definition of "pending"."""

from __future__ import annotations

import pytest

from edge.records import (
    AudioPause,
    ClipReason,
    CloudScore,
    Confirmation,
    ConfirmationResult,
    Counter,
    DetectionStatus,
    EdgeScore,
    GuideVerdict,
    NewClip,
    NewDetection,
    NewRecording,
    NewTour,
    Pending,
    StartBasis,
    SyncMarks,
    SyncState,
)
from edge.store import Store, open_store
from edge.store_memory import MemoryStore


@pytest.fixture(params=["sqlite", "memory"])
def store(request, tmp_path) -> Store:
    if request.param == "sqlite":
        return open_store(tmp_path / "edge.db")
    return MemoryStore()


T0 = "2023-04-20T12:40:00.000+00:00"


def _at(s: float) -> str:
    from datetime import datetime, timedelta

    return (datetime.fromisoformat(T0) + timedelta(seconds=s)).isoformat(timespec="milliseconds")


def _tour_with_recording(store: Store, started: str | None = None) -> tuple[str, str]:
    tour = store.start_tour(NewTour("Ana", "Quebrada", 6.6, -74.2, started))
    rec = store.add_recording(
        NewRecording(tour, "H02_20230420_074000.ogg", T0, StartBasis.FILE_NAME, "/x/H02.ogg")
    )
    return tour, rec


def _det(store: Store, tour: str, rec: str, start: float, code: str = "grekis", closed: bool = True) -> str:
    u = store.add_detection(
        NewDetection(
            tour_uuid=tour,
            recording_uuid=rec,
            species_code=code,
            scientific_name="Pitangus sulphuratus",
            common_name="Great Kiskadee",
            taxon_class="Aves",
            start_time=_at(start),
            end_time=_at(start + 5),
            offset_start=start,
            offset_end=start + 5,
            confidence=0.9,
            band="high",
            model_version="m1",
        )
    )
    if closed:
        store.close_detection(u)
    return u


def _clip(store: Store, tour: str, det: str | None, reason=ClipReason.RANDOM, name="a", at=None) -> str:
    return store.add_clip(
        NewClip(
            path=f"/clips/{name}.ogg",
            sha256="0" * 64,
            bytes=1000,
            reason=reason,
            tour_uuid=tour,
            detection_uuid=det,
            source="H02_20230420_074000.ogg",
            source_offset=10.0,
            duration_s=5.0,
            edge_top=(EdgeScore("grekis", 0.9), EdgeScore("trokin", 0.1)),
            recorded_at=at,
        )
    )


def test_tours_recordings_and_detections_round_trip(store):
    tour, rec = _tour_with_recording(store, started="2023-04-20T12:40:00.000+00:00")
    d = _det(store, tour, rec, 12.5, closed=False)
    got = store.detection(d)
    assert got.species_code == "grekis" and got.common_name == "Great Kiskadee" and got.recording_uuid == rec
    assert got.status is DetectionStatus.PENDING and got.guide_verdict is None
    assert got.sync_state is SyncState.OPEN and not got.closed
    store.extend_detection(d, _at(25.0), 20.0, 0.95, "high")
    store.extend_detection(d, _at(26.0), 21.0, 0.7, "medium")  # confidence keeps its maximum
    got = store.detection(d)
    assert (got.offset_end, got.confidence, got.band) == (21.0, 0.95, "medium")
    assert store.close_open_detections() == 1 and store.close_open_detections() == 0
    store.extend_detection(d, _at(40.0), 35.0, 0.99, "high")  # a closed event is never extended
    assert store.detection(d).offset_end == 21.0
    store.finish_recording(rec, 60.0, "the Ogg stream has no end-of-stream page (truncated)")
    r = store.recording(rec)
    assert r.duration_s == 60.0 and r.start_basis is StartBasis.FILE_NAME and "truncated" in r.warning
    assert store.recordings(tour) == [r]
    (summary,) = store.tours()
    assert summary.tour.uuid == tour and (summary.detections, summary.species) == (1, 1)
    assert store.detection("nope") is None and store.tour("nope") is None


def test_end_tour_never_before_its_last_detection(store):
    tour, rec = _tour_with_recording(store, started=_at(0))
    _det(store, tour, rec, 50.0)
    store.end_tour(tour, at=_at(20.0))  # a clock that says the tour ended before its detection did
    t = store.tour(tour)
    assert t.ended_at == _at(55.0) and t.started_at == T0
    store.end_tour(tour, at=_at(999.0))  # ending twice changes nothing
    assert store.tour(tour).ended_at == _at(55.0)
    # a tour started on the device clock whose recording began earlier starts with its recording
    late = store.start_tour(NewTour("Ana", started_at=_at(3600)))
    store.add_recording(NewRecording(late, "x.wav", T0, StartBasis.MTIME))
    store.end_tour(late, at=_at(3700))
    assert store.tour(late).started_at == T0 and store.tour(late).ended_at == _at(3700)


def test_one_definition_of_pending_rejected_and_synced(store):
    tour, rec = _tour_with_recording(store)
    a, b, c = (_det(store, tour, rec, s) for s in (0.0, 10.0, 20.0))
    open_ = _det(store, tour, rec, 30.0, closed=False)
    _clip(store, tour, a, name="a")
    _clip(store, tour, b, name="b")
    _clip(store, tour, None, name="c")
    store.add_feedback(b, GuideVerdict.WRONG_SPECIES, "trokin")
    assert store.pending() == Pending(
        detections=3, clips=3, feedback=1, tours=1, open_detections=1, rejected_detections=0, rejected_clips=0
    )
    batch = store.unsynced_batch(2)
    assert [t.uuid for t in batch.tours] == [tour] and [d.uuid for d in batch.detections] == [a, b]
    store.mark_synced(SyncMarks([tour], [a], {b: "unknown species code"}))
    p = store.pending()
    # b is rejected: not pending, never re-sent, and its clip and feedback are blocked with it
    assert (p.detections, p.rejected_detections, p.clips, p.rejected_clips, p.feedback, p.tours) == (
        1,
        1,
        2,
        1,
        0,
        0,
    )
    assert store.detection(b).sync_state is SyncState.REJECTED and store.detection(b).sync_error
    assert [d.uuid for d in store.unsynced_batch(10).detections] == [c]  # exactly the pending ones
    assert store.detection(open_).sync_state is SyncState.OPEN
    assert p.total == p.detections + p.clips + p.feedback + p.tours


def test_clips_to_send_wait_for_their_detection_and_go_by_priority(store):
    tour, rec = _tour_with_recording(store)
    a = _det(store, tour, rec, 0.0)
    _clip(store, tour, a, ClipReason.RANDOM, "r", at=_at(1))
    _clip(store, tour, None, ClipReason.UNCERTAIN, "u", at=_at(2))
    flagged = _clip(store, tour, a, ClipReason.UNCERTAIN, "f", at=_at(3))
    assert [c.path for c in store.clips_to_send()] == ["/clips/u.ogg"]  # a is not on the cloud yet
    store.mark_synced(SyncMarks([tour], [a], {}))
    assert store.flag_clips_of(a) == 2
    order = [c.path for c in store.clips_to_send()]
    assert order == ["/clips/r.ogg", "/clips/f.ogg", "/clips/u.ogg"]  # flagged first, oldest first
    assert [c.path for c in store.clips_to_send(1)] == ["/clips/r.ogg"]
    store.mark_clip_failed(flagged, "HTTP 422")
    store.mark_clip_synced(store.clips_to_send()[0].uuid)
    assert [c.path for c in store.clips_to_send()] == ["/clips/u.ogg"]
    clip = next(c for c in store.clips() if c.path == "/clips/r.ogg")
    assert (
        clip.synced_at
        and clip.source == "H02_20230420_074000.ogg"
        and clip.edge_top[0] == EdgeScore("grekis", 0.9)
    )
    assert store.pending().rejected_clips == 1


def test_budget_bytes_eviction_and_recent_paths(store):
    tour, rec = _tour_with_recording(store)
    x = _clip(store, tour, None, name="x", at=_at(1))
    y = _clip(store, tour, None, name="y", at=_at(2))
    assert store.clip_bytes() == 2000 and store.clip_bytes(tour) == 2000 and store.clip_bytes("other") == 0
    assert store.evictable_clips() == []  # nothing unsynced is ever evictable
    store.mark_clip_synced(y)
    store.mark_clip_synced(x)
    assert [c.uuid for c in store.evictable_clips()] == [x, y]  # oldest first
    store.mark_evicted(x)
    assert store.clip_bytes() == 1000 and [c.uuid for c in store.clips()] == [y]
    assert len(store.clips(include_evicted=True)) == 2
    assert store.recent_clip_paths(5) == ["/clips/y.ogg"]


def test_confirmations_set_the_cloud_verdict_apart_from_the_guides(store):
    tour, rec = _tour_with_recording(store)
    a, b = _det(store, tour, rec, 0.0), _det(store, tour, rec, 10.0, code="trokin")
    store.add_feedback(a, GuideVerdict.WRONG_SPECIES, "trokin")
    species = (CloudScore("grekis", 0.8, "Pitangus sulphuratus", "Great Kiskadee", "Aves"),)
    assert store.apply_confirmation(Confirmation(a, True, species)) is ConfirmationResult.APPLIED
    assert store.apply_confirmation(Confirmation(b, False, species)) is ConfirmationResult.APPLIED
    assert store.apply_confirmation(Confirmation(None, None)) is ConfirmationResult.NO_DETECTION
    assert store.apply_confirmation(Confirmation(a, None)) is ConfirmationResult.NO_VERDICT
    assert store.apply_confirmation(Confirmation("nope", True)) is ConfirmationResult.UNKNOWN_DETECTION
    da, db = store.detection(a), store.detection(b)
    # the guide said wrong species, the cloud agrees with the edge: both are kept, apart
    assert da.status is DetectionStatus.CONFIRMED and da.guide_verdict is GuideVerdict.WRONG_SPECIES
    assert da.cloud_species == species and db.status is DetectionStatus.DISPUTED
    counts = {s.code: s for s in store.species_counts(tour)}
    assert (counts["grekis"].confirmed, counts["trokin"].disputed) == (1, 1)
    assert [s.code for s in store.species_counts()] == ["grekis", "trokin"]


def test_feedback_waits_for_its_detection(store):
    tour, rec = _tour_with_recording(store)
    a = _det(store, tour, rec, 0.0)
    f = store.add_feedback(a, GuideVerdict.CONFIRMED)
    assert store.feedback_to_send() == []
    store.mark_synced(SyncMarks([tour], [a], {}))
    (fb,) = store.feedback_to_send()
    assert fb.uuid == f and fb.kind is GuideVerdict.CONFIRMED
    store.mark_feedback_synced(f)
    assert store.feedback_to_send() == [] and store.pending().feedback == 0
    with pytest.raises(ValueError):
        GuideVerdict("likely")


def test_sync_state_counters_and_audio_pause(store):
    info = store.sync_info()
    assert (info.last_sync, info.last_error_at, info.confirmations_cursor) == (None, None, 0)
    store.set_confirmations_cursor(13)
    store.record_sync(ok=False, at="2025-01-01T00:00:00.000+00:00")
    store.record_sync(ok=True, at="2025-01-01T00:01:00.000+00:00")
    info = store.sync_info()
    assert (
        info.confirmations_cursor == 13
        and info.last_sync.endswith("00:01:00.000+00:00")
        and info.last_error_at
    )
    assert store.counters() == {c: 0 for c in Counter}
    store.add_to_counter(Counter.SPEECH_SUPPRESSED)
    store.add_to_counter(Counter.SPEECH_SUPPRESSED, 2)
    assert store.counters()[Counter.SPEECH_SUPPRESSED] == 3
    assert store.audio_pause() is None
    store.set_audio_pause(AudioPause("disk full", "2025-01-01T00:00:00.000+00:00"))
    assert store.audio_pause() == AudioPause("disk full", "2025-01-01T00:00:00.000+00:00")
    store.set_audio_pause(None)
    assert store.audio_pause() is None


def test_export_rows_carry_tour_recording_and_clip(store):
    tour, rec = _tour_with_recording(store)
    a = _det(store, tour, rec, 12.0)
    _clip(store, tour, a, name="k")
    other = store.start_tour(NewTour("Luis"))
    store.add_detection(NewDetection(other, "trokin", _at(99), _at(104), 0.0, 5.0, 0.7, "medium", "m1"))
    rows = store.export_rows(tour)
    assert len(rows) == 1 and rows[0].clip_path == "/clips/k.ogg"
    assert rows[0].tour.latitude == 6.6 and rows[0].recording.source == "H02_20230420_074000.ogg"
    everything = store.export_rows()
    assert [r.detection.species_code for r in everything] == ["grekis", "trokin"]
    assert everything[1].recording is None and everything[1].clip_path is None


def test_models_install_activate_and_roll_back(store):
    assert store.active_model() is None and store.previous_model() is None
    store.install_model("1", "/m/1", "a" * 64, "fp", {"windows": 3})
    store.activate_model("1")
    store.install_model("2", "/m/2", "b" * 64, "fp", None)
    store.activate_model("2")
    assert store.active_model().version == "2" and store.previous_model().version == "1"
    assert store.previous_model().shadow == {"windows": 3}
    store.activate_model("1")  # roll back
    assert store.active_model().version == "1" and store.previous_model().version == "2"
    assert store.check() == "ok"


def test_foreign_keys_hold(store):
    with pytest.raises(Exception):  # noqa: B017 - sqlite3.IntegrityError or ValueError
        store.add_detection(NewDetection("no-such-tour", "grekis", T0, T0, 0.0, 1.0, 0.9, "high", "m"))
    assert store.pending().detections == 0
