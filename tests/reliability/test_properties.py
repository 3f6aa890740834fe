"""Property tests (Hypothesis; derandomized, so CI runs the same cases every time):

* the wire format round-trips: what the edge's payload builders make of any record the edge can
  hold validates against the cloud's schemas, keeps its values, and survives JSON and back;
  the JSON types the schema states are the ones the cloud reads;
* ``LabelSpace``: encode/decode and its JSON form round-trip;
* event merging (``edge/detector.py``) never loses or duplicates a window;
* the sampler (``edge/sampler.py``) never exceeds its budgets and never evicts an unsynced clip.
"""

from __future__ import annotations

import json
import math
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cloud import schemas
from edge.detector import Detector, WindowResult, band_of
from edge.records import Clip, ClipReason, Detection, DetectionStatus, EdgeScore, GuideVerdict, Tour
from edge.sync import batch_payload, clip_payload
from shared_features import LabelSpace
from shared_features.labels import Species
from shared_features.windows import Window

LABELS = LabelSpace.default()


def deterministic(n: int) -> Any:
    return settings(
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=n,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ---------------------------------------------------------------------------------- strategies
uuids = st.uuids().map(str)
zones = st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))])
times = st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=zones).map(
    lambda t: t.isoformat(timespec="milliseconds")
)
unit = st.floats(0.0, 1.0, allow_nan=False)
offsets = st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False)

# what the edge can hold: its settings bound the guide and the place (edge/settings.py)
tours = st.builds(
    Tour,
    uuid=uuids,
    guide=st.text(min_size=1, max_size=200),
    location=st.none() | st.text(max_size=200),
    latitude=st.none() | st.floats(-90, 90),
    longitude=st.none() | st.floats(-180, 180),
    started_at=times,
    ended_at=st.none() | times,
    synced_at=st.none(),
)


@st.composite
def detections(draw: Any, tour_uuid: str) -> Detection:
    sp = draw(st.sampled_from(LABELS.species))
    conf = draw(unit)
    start = draw(times)
    return Detection(
        uuid=draw(uuids),
        tour_uuid=tour_uuid,
        recording_uuid=None,
        species_code=sp.code,
        scientific_name=sp.scientific_name,
        common_name=sp.common_name,
        taxon_class=sp.taxon_class,
        start_time=start,
        end_time=draw(times),
        offset_start=draw(offsets),
        offset_end=draw(offsets),
        confidence=conf,
        band=band_of(conf),
        model_version=draw(st.text(max_size=100)),
        status=DetectionStatus.PENDING,
        guide_verdict=None,
        closed=True,
        cloud_species=(),
        synced_at=None,
        sync_error=None,
        created_at=start,
    )


clips = st.builds(
    Clip,
    uuid=uuids,
    tour_uuid=st.none() | uuids,
    detection_uuid=st.none() | uuids,
    recording_uuid=st.none(),
    path=st.just("/clips/x.ogg"),
    sha256=st.binary(min_size=32, max_size=32).map(bytes.hex),
    bytes=st.integers(1, 10**9),
    reason=st.sampled_from(list(ClipReason)),
    start_offset=offsets,
    source=st.none() | st.text(min_size=1, max_size=255),  # a file name, or "microphone"
    source_offset=st.none() | offsets,
    duration_s=st.none() | offsets,
    edge_top=st.lists(st.builds(EdgeScore, st.sampled_from(LABELS.codes), unit), max_size=3).map(tuple),
    recorded_at=times,
    synced_at=st.none(),
    evicted_at=st.none(),
    sync_error=st.none(),
)


def _instant(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


# ---------------------------------------------------------------------------------- wire
@deterministic(150)
@given(data=st.data(), tour=tours)
def test_sync_batch_round_trips(data: Any, tour: Tour) -> None:
    dets = data.draw(st.lists(detections(tour.uuid), max_size=5))
    text = json.dumps(batch_payload([tour], dets, None))
    parsed = schemas.SyncBatch.model_validate_json(text)
    assert schemas.SyncBatch.model_validate_json(parsed.model_dump_json()) == parsed  # JSON and back
    (t,) = parsed.tours
    assert (str(t.uuid), t.guide, t.location) == (tour.uuid, tour.guide, tour.location)
    assert (t.latitude, t.longitude) == (tour.latitude, tour.longitude)
    assert t.started_at == _instant(tour.started_at)
    assert t.ended_at == (None if tour.ended_at is None else _instant(tour.ended_at))
    assert len(parsed.detections) == len(dets)
    for w, d in zip(parsed.detections, dets):
        assert (str(w.uuid), str(w.tour_uuid), w.species_code) == (d.uuid, d.tour_uuid, d.species_code)
        assert (w.start_time, w.end_time) == (_instant(d.start_time), _instant(d.end_time))
        assert w.confidence == round(d.confidence, 4) and w.band == d.band == band_of(d.confidence)
        assert w.model_version == d.model_version


@deterministic(150)
@given(clip=clips)
def test_clip_meta_round_trips(clip: Clip) -> None:
    parsed = schemas.ClipMeta.model_validate_json(json.dumps(clip_payload(clip)))
    assert schemas.ClipMeta.model_validate_json(parsed.model_dump_json()) == parsed
    assert (str(parsed.uuid), parsed.sha256, parsed.bytes) == (clip.uuid, clip.sha256, clip.bytes)
    assert parsed.tour_uuid == (None if clip.tour_uuid is None else __import__("uuid").UUID(clip.tour_uuid))
    assert parsed.reason == str(clip.reason) and parsed.recorded_at == _instant(clip.recorded_at)
    assert parsed.start_offset == clip.start_offset and parsed.source == clip.source
    assert parsed.source_offset == (None if clip.source_offset is None else round(clip.source_offset, 3))
    assert [(e.code, e.probability) for e in parsed.edge_top] == [
        (e.code, e.probability) for e in clip.edge_top
    ]


@deterministic(60)
@given(
    kind=st.sampled_from(list(GuideVerdict)),
    code=st.sampled_from(LABELS.codes),
    note=st.none() | st.text(max_size=2000),
)
def test_feedback_as_the_sync_client_sends_it_round_trips(
    kind: GuideVerdict, code: str, note: str | None
) -> None:
    from edge.records import NewDetection, NewTour, SyncMarks
    from edge.store_memory import MemoryStore
    from edge.sync import SyncClient, SyncReport

    store = MemoryStore()
    tour = store.start_tour(NewTour("Ana"))
    t = "2026-03-14T06:30:00.000+00:00"
    det = store.add_detection(NewDetection(tour, code, t, t, 0.0, 5.0, 0.9, "high", "m 1"))
    store.close_detection(det)
    store.mark_synced(SyncMarks([tour], [det], {}))
    correct = code if kind is GuideVerdict.WRONG_SPECIES else None
    fb = store.add_feedback(det, kind, correct, note)
    sent: list[bytes] = []

    def cloud(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        body = schemas.FeedbackIn.model_validate_json(request.content)
        return httpx.Response(
            200, json=schemas.FeedbackAck(uuid=body.uuid, duplicate=False).model_dump(mode="json")
        )

    client = SyncClient(store, "http://cloud", "t", transport=httpx.MockTransport(cloud))
    client.push_feedback(SyncReport())
    (raw,) = sent
    parsed = schemas.FeedbackIn.model_validate_json(raw)
    assert schemas.FeedbackIn.model_validate_json(parsed.model_dump_json()) == parsed
    assert (str(parsed.uuid), str(parsed.detection_uuid), parsed.kind) == (fb, det, str(kind))
    assert (parsed.correct_code, parsed.note) == (correct, note)
    assert store.feedback_to_send() == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=4,
)


def _finite(v: Any) -> bool:
    """A JSON number the cloud can store: not a boolean, not Infinity."""
    return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)


@deterministic(300)
@given(value=json_values)
def test_the_cloud_reads_json_types_as_the_schema_states(value: Any) -> None:
    """A count is a JSON integer (3.0 included), never a boolean; a probability a number; a time an
    ISO string; the wire version 1 or 2 — whatever else comes, the answer is a refusal, not a guess."""
    meta = {
        "uuid": "6fbbb7b7-5537-2c63-8bdd-3d66d85a6298",
        "sha256": "0" * 64,
        "bytes": 10,
        "reason": "random",
        "recorded_at": "2026-03-14T06:30:00Z",
    }
    for field, ok in (
        ("bytes", lambda v: _finite(v) and v == int(v) and v > 0),
        ("start_offset", lambda v: _finite(v) and v >= 0),
        ("recorded_at", lambda v: False),  # no generated value is an ISO date-time string
        ("wire_version", lambda v: not isinstance(v, bool) and v in (1, 2)),
    ):
        doc = json.dumps({**meta, field: value})
        try:
            schemas.ClipMeta.model_validate_json(doc)
            accepted = True
        except ValidationError:
            accepted = False
        if isinstance(value, str) and field == "recorded_at":
            continue  # a random short string is not a date-time; pydantic decides, not this test
        assert accepted == ok(value), (field, value)


# ---------------------------------------------------------------------------------- labels
species_lists = st.lists(
    st.builds(
        Species,
        code=st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8),
        scientific_name=st.text(min_size=1, max_size=30),
        common_name=st.text(min_size=1, max_size=30),
        taxon_class=st.sampled_from(["Aves", "Amphibia", "Insecta", "Mammalia"]),
    ),
    min_size=1,
    max_size=40,
    unique_by=lambda s: s.code,
)


@deterministic(150)
@given(species=species_lists, data=st.data())
def test_label_space_encode_decode_and_json_round_trip(species: list[Species], data: Any) -> None:
    space = LabelSpace(species)
    back = LabelSpace.from_json(space.to_json())
    assert back == space and back.digest() == space.digest() and back.codes == space.codes
    primary = data.draw(st.sampled_from(space.codes))
    secondary = data.draw(st.lists(st.sampled_from(space.codes), max_size=5))
    weight = data.draw(st.floats(0.05, 0.95))
    y = space.encode(primary, secondary, secondary_weight=weight)
    assert y.shape == (len(space),) and y.dtype == np.float32 and y[space.index(primary)] == 1.0
    assert {s.code for s in space.decode(y, threshold=1.0)} == {primary}
    assert {s.code for s in space.decode(y, threshold=np.float32(weight))} == {primary, *secondary}
    assert all(space[space.index(c)].code == c for c in space.codes)
    top = space.top_k(y, k=len(space))
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)


def test_the_packaged_label_space_round_trips() -> None:
    space = LabelSpace.default()
    assert len(space) == 206 and LabelSpace.from_json(space.to_json()) == space
    for i, code in enumerate(space.codes):
        y = space.encode(code)
        assert int(np.argmax(y)) == i and [s.code for s in space.decode(y)] == [code]


# ---------------------------------------------------------------------------------- event merging
class _Fixed:
    """A scorer over three species whose scores the test sets window by window."""

    needs_features = False
    version = description = "fixed"

    def __init__(self) -> None:
        self.labels = LabelSpace(LABELS.species[:3])

    def score(self, window: np.ndarray, feats: np.ndarray | None) -> np.ndarray:
        raise AssertionError("events() is fed WindowResults directly")


@deterministic(300)
@given(
    scores=st.lists(st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3), min_size=1, max_size=40),
    segments=st.lists(st.integers(1, 40), max_size=3),
)
def test_event_merging_never_loses_or_duplicates_a_window(
    scores: list[list[float]], segments: list[int]
) -> None:
    det = Detector(_Fixed(), threshold=0.5, stride_seconds=2.5)
    cuts = set(np.cumsum(segments).tolist())  # a new segment (file, device reconnect) resets indices
    windows_of: dict[int, list[tuple[int, int]]] = {}  # id(event) → [(segment, index)]
    events: dict[int, Any] = {}
    closed: list[int] = []
    seg = index = 0
    for k, row in enumerate(scores):
        if k in cuts:
            closed += [id(e) for e in det.close_all()]
            det.reset()
            seg, index = seg + 1, 0
        w = Window(index, index * 2.5, index * 2.5 + 5.0, 5.0)
        active, ended = det.events(
            WindowResult(w, np.array(row, np.float32), np.zeros(1, np.float32), np.zeros((1, 1), np.float32))
        )
        closed += [id(e) for e in ended]
        assert len({e.species.code for e in active}) == len(active)  # one event per species and window
        for e in active:
            events[id(e)] = e
            windows_of.setdefault(id(e), []).append((seg, index))
        index += 1
    closed += [id(e) for e in det.close_all()]
    # every window above a species' threshold is in exactly one event of that species
    seg = index = 0
    expected: dict[str, list[tuple[int, int]]] = {}
    for k, row in enumerate(scores):
        if k in cuts:
            seg, index = seg + 1, 0
        for j, p in enumerate(row):
            if p >= 0.5:
                expected.setdefault(det.scorer.labels[j].code, []).append((seg, index))
        index += 1
    got: dict[str, list[tuple[int, int]]] = {}
    for eid, ws in windows_of.items():
        got.setdefault(events[eid].species.code, []).extend(ws)
        assert len(set(ws)) == len(ws) and len({s for s, _ in ws}) == 1  # one segment, no repeats
        idx = [i for _, i in ws]
        assert idx == list(range(idx[0], idx[0] + len(idx)))  # consecutive windows
        e = events[eid]
        assert (e.start, e.end) == (idx[0] * 2.5, idx[-1] * 2.5 + 5.0)
    assert {c: sorted(v) for c, v in got.items()} == expected
    assert sorted(closed) == sorted(events) and len(set(closed)) == len(closed)  # each closed once


# ---------------------------------------------------------------------------------- sampler budgets
@deterministic(40)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["save", "save", "save", "sync"]),
            st.integers(0, 2),  # tour
            st.sampled_from(list(ClipReason)),
            st.floats(0.0, 0.5),  # amplitude: the clip's size varies with it
        ),
        min_size=1,
        max_size=40,
    ),
    tour_budget=st.integers(3_000, 40_000),
    total_budget=st.integers(5_000, 80_000),
)
def test_the_sampler_never_exceeds_its_budgets(ops: list[Any], tour_budget: int, total_budget: int) -> None:
    from edge.records import NewTour
    from edge.sampler import ClipSource, Sampler
    from edge.speech import NoSpeechGate
    from edge.store_memory import MemoryStore

    store = MemoryStore()
    tours = [store.start_tour(NewTour(f"g{k}")) for k in range(3)]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        sampler = Sampler(
            store,
            Path(tmp),
            NoSpeechGate(),
            tour_budget=tour_budget,
            total_budget=total_budget,
            fmt="FLAC",
            seed=0,
            min_free_bytes=0,
        )
        unsynced: set[str] = set()
        for op, t, reason, amp in ops:
            if op == "sync":
                for c in store.clips_to_send():
                    store.mark_clip_synced(c.uuid)
                    unsynced.discard(c.uuid)
                continue
            x = (amp * rng.standard_normal(3200)).astype(np.float32)  # 0.1 s: a few kB as FLAC
            u = sampler.save(x, 32_000, reason, ClipSource(tours[t]))
            if u is not None:
                unsynced.add(u)
                if reason is not ClipReason.FLAGGED:  # flagged clips may exceed a tour's budget …
                    assert store.clip_bytes(tours[t]) <= tour_budget
            assert store.clip_bytes() <= total_budget  # … never the device's
            live = {c.uuid: c for c in store.clips()}
            assert unsynced <= set(live)  # an unsynced clip is never evicted
            assert all(Path(live[c].path).is_file() for c in unsynced)
        assert sum(c.bytes for c in store.clips()) == store.clip_bytes()


@pytest.mark.parametrize("value", [True, "3", 1.5])
def test_a_count_is_never_a_boolean_a_string_or_a_fraction(value: Any) -> None:
    with pytest.raises(ValidationError):
        schemas.DeviceStatus.model_validate_json(json.dumps({"pending_clips": value}))
    assert schemas.DeviceStatus.model_validate_json('{"pending_clips": 3.0}').pending_clips == 3
