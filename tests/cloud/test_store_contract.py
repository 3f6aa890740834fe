"""The cloud store's contract: every operation of :class:`cloud.store.Store`, run against the
in-memory store, SQLite and a real PostgreSQL 16 server (``pgserver``; never a mock). Idempotency
on UUIDs, ownership between devices, concurrent ingest from threads (two store instances = two
replicas), the confirmation cursor under concurrency, and migrations under concurrent start."""

from __future__ import annotations

import itertools
import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from cloud.errors import DeviceExists, NotFound, StoreError, Unauthorized
from cloud.schemas import ClipMeta, DetectionIn, DeviceStatus, FeedbackIn, TourIn
from cloud.store import (
    MIGRATION_NAMES,
    ClipResult,
    FeedbackResult,
    IngestResult,
    MemoryCloudStore,
    NewConfirmation,
    Role,
    Store,
    open_url,
)

BACKENDS = ["memory", "sqlite", "postgresql"]
_db_names = itertools.count()
T0 = datetime(2026, 3, 14, 6, 30, tzinfo=UTC)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def db_url(backend, tmp_path, request) -> str | None:
    """This test's own database (None for the in-memory store)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'cloud.db'}"
    if backend == "postgresql":
        return request.getfixturevalue("postgres").create_database(f"contract_{next(_db_names)}")
    return None


@pytest.fixture
def opener(db_url) -> Callable[..., Store]:
    """Opens a store on this test's data: every call is a new instance (a new connection pool, a
    new SQLite connection: another replica) over the same database; memory has one instance."""
    if db_url is None:
        mem = MemoryCloudStore()
        yield lambda **kw: mem
        return
    opened: list[Store] = []

    def open_(**kw) -> Store:
        st = open_url(db_url, **kw)
        opened.append(st)
        return st

    yield open_
    for st in opened:
        st.close()


@pytest.fixture
def store(opener) -> Store:
    return opener()


def uid() -> str:
    return str(uuid.uuid4())


def tour_in(**kw) -> TourIn:
    return TourIn.model_validate(
        {"uuid": uid(), "guide": "Ana", "location": "El Silencio", "started_at": T0, **kw}
    )


def det_in(tour: TourIn | str, code: str = "rutjac1", at: float = 0.0, **kw) -> DetectionIn:
    start = T0 + timedelta(seconds=at)
    return DetectionIn.model_validate(
        {
            "uuid": uid(),
            "tour_uuid": str(tour.uuid) if isinstance(tour, TourIn) else tour,
            "species_code": code,
            "start_time": start,
            "end_time": start + timedelta(seconds=3),
            "confidence": 0.7,
            "band": "medium",
            "model_version": "student 1",
            **kw,
        }
    )


def clip_in(**kw) -> ClipMeta:
    return ClipMeta.model_validate(
        {"uuid": uid(), "sha256": "ab" * 32, "bytes": 1000, "reason": "uncertain", "recorded_at": T0, **kw}
    )


def feedback_in(detection_uuid: str, kind: str = "confirmed", **kw) -> FeedbackIn:
    return FeedbackIn.model_validate(
        {"uuid": uid(), "detection_uuid": detection_uuid, "kind": kind, "created_at": T0, **kw}
    )


def verdict(clip_uuid: str, device_id: int, agree: bool | None = True, **kw) -> NewConfirmation:
    return NewConfirmation(
        clip_uuid=clip_uuid,
        device_id=device_id,
        detection_uuid=kw.pop("detection_uuid", None),
        edge_species=kw.pop("edge_species", "rutjac1"),
        agree=agree,
        species=kw.pop("species", [{"code": "rutjac1", "probability": 0.9}]),
        model=kw.pop("model", "ensemble 1"),
    )


def device(store: Store, name: str = "guide-1", role: Role = Role.DEVICE) -> int:
    return store.authenticate(store.add_device(name, role), role).id


# ------------------------------------------------------------------------------------ migrations
def test_migrations_are_recorded_by_name(store):
    assert store.applied_migrations() == list(MIGRATION_NAMES)
    assert store.pending_migrations() == []
    assert store.migrate() == []  # nothing applied twice


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_start_applies_each_migration_once(opener):
    """Six processes' worth of stores open one fresh database at the same moment."""
    barrier = threading.Barrier(6)
    applied: list[list[str]] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            barrier.wait()
            st = opener(migrate=False)
            applied.append(st.migrate())
        except BaseException as exc:  # noqa: BLE001 - collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(itertools.chain(*applied)) == sorted(MIGRATION_NAMES)  # each exactly once
    assert opener().applied_migrations() == list(MIGRATION_NAMES)


OLD_ROWS = [
    "INSERT INTO devices (id, name, role, token_hash, created_at) VALUES (1, 'old', 'device', 'h', "
    "'2025-01-01T00:00:00Z')",
    "INSERT INTO tours VALUES ('00000000-0000-4000-8000-000000000001', 1, 'Ana', NULL, NULL, NULL, "
    "'2025-01-01T10:00:00Z', NULL, '2025-01-01T10:00:00Z')",
    "INSERT INTO detections VALUES ('00000000-0000-4000-8000-000000000002', 1, "
    "'00000000-0000-4000-8000-000000000001', 'grekis', '2025-01-01T10:01:00Z', '2025-01-01T10:01:03Z', "
    "0.9, 'confirmed', 'm', '2025-01-01T10:00:00Z')",
    "INSERT INTO releases VALUES ('0.9', 'aaaa', 'fv1-old', '/r/old.tar', '{\"name\": \"student\"}', "
    "'2025-01-01T00:00:00Z', true)",
]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrade_keeps_old_rows(backend, db_url, opener, tmp_path):
    """A database at the first schema with a v1 band name is upgraded in place by name."""
    if backend == "sqlite":
        from cloud.store.sqlite import MIGRATIONS
        from shared_features.sqlite import SQLiteStore

        class Old(SQLiteStore):
            pass

        Old.MIGRATIONS = MIGRATIONS[:1]
        old = Old(tmp_path / "cloud.db")
        with old.tx() as db:
            for sql in OLD_ROWS:
                db.execute(sql)
        old.close()
    else:
        import psycopg

        from cloud.store.postgres import MIGRATIONS

        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE migrations (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
                "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            conn.execute(MIGRATIONS[0][1])
            conn.execute("INSERT INTO migrations (name) VALUES ('initial')")
            for sql in OLD_ROWS:
                conn.execute(sql)
    st = opener(migrate=False)
    assert st.pending_migrations() == list(MIGRATION_NAMES[1:])
    assert st.migrate() == list(MIGRATION_NAMES[1:])
    det = st.detection(1, "00000000-0000-4000-8000-000000000002")
    assert (
        det is not None and det.band == "high" and det.start_time == datetime(2025, 1, 1, 10, 1, tzinfo=UTC)
    )
    assert st.devices()[0].status is None and st.devices()[0].last_sync_at is None
    assert st.tour_report()[0].species[0].code == "grekis"
    old_release = st.current_release()  # published before releases were signed: kept, unsigned
    assert old_release.version == "0.9" and old_release.signature is None


# ------------------------------------------------------------------------------------ devices
def test_devices_tokens_roles_and_revocation(store, opener):
    token = store.add_device("guide-1")
    admin = store.add_device("office", Role.ADMIN)
    dev = store.authenticate(token)
    assert dev.name == "guide-1" and dev.role is Role.DEVICE and not dev.revoked
    assert dev.created_at.tzinfo is not None
    assert store.authenticate(admin, Role.ADMIN).role is Role.ADMIN
    assert store.authenticate(admin).name == "office"  # an admin may act as a device
    for bad, role in ((None, Role.DEVICE), ("", Role.DEVICE), ("nope", Role.DEVICE), (token, Role.ADMIN)):
        with pytest.raises(Unauthorized):
            store.authenticate(bad, role)
    with pytest.raises(DeviceExists, match="exists"):
        store.add_device("guide-1")
    with pytest.raises(ValueError, match="role"):
        store.add_device("x", "superuser")
    assert [d.name for d in store.devices()] == ["guide-1", "office"]
    # revocation: the very next request is refused, also by another replica's store
    other_replica = opener()
    assert other_replica.authenticate(token).name == "guide-1"
    revoked = store.revoke_device("guide-1")
    assert revoked.revoked and revoked.revoked_at is not None
    with pytest.raises(Unauthorized, match="revoked"):
        store.authenticate(token)
    with pytest.raises(Unauthorized, match="revoked"):
        other_replica.authenticate(token)
    assert store.revoke_device("guide-1").revoked_at == revoked.revoked_at  # the first time stays
    with pytest.raises(NotFound):
        store.revoke_device("never-registered")
    assert store.authenticate(admin).name == "office"


# ------------------------------------------------------------------------------------ ingest
def test_ingest_is_idempotent_on_uuids_and_typed(store):
    dev = device(store)
    t = tour_in()
    dets = [det_in(t, "rutjac1", 0), det_in(t, "grekis", 10)]
    rep = store.ingest(dev, [t], dets)
    assert [(i.uuid, i.result) for i in rep.items] == [
        (str(x.uuid), IngestResult.ACCEPTED) for x in (t, *dets)
    ]
    again = store.ingest(dev, [t], [dets[1], dets[0], dets[0]])  # re-sent, reordered, repeated
    assert [i.result for i in again.items] == [IngestResult.DUPLICATE] * 4
    assert [i.uuid for i in again.detections] == [str(dets[1].uuid), str(dets[0].uuid), str(dets[0].uuid)]
    assert all(i.error is None for i in again.items)
    inside = det_in(t, "grekis", 20)
    rep = store.ingest(dev, [], [inside, inside])  # the same UUID twice in one batch
    assert [i.result for i in rep.detections] == [IngestResult.ACCEPTED, IngestResult.DUPLICATE]
    c = store.counts()
    assert (c["tours"], c["detections"]) == (1, 3)
    got = store.detection(dev, str(dets[1].uuid))
    assert got is not None and got.species_code == "grekis" and got.tour_uuid == str(t.uuid)
    assert got.start_time == T0 + timedelta(seconds=10) and got.band == "medium" and got.confidence == 0.7
    assert store.detection(dev, str(uuid.uuid4())) is None and store.detection(dev, "not-a-uuid") is None
    # a duplicate tour updates its end time (the edge closes tours after syncing them)
    ended = T0 + timedelta(hours=2)
    assert (
        store.ingest(dev, [t.model_copy(update={"ended_at": ended})], []).tours[0].result
        is IngestResult.DUPLICATE
    )
    assert store.tour_report(str(t.uuid))[0].ended_at == ended


def test_unknown_tour_and_timestamps_in_utc(store):
    dev = device(store)
    orphan = det_in(str(uuid.uuid4()))
    item = store.ingest(dev, [], [orphan]).detections[0]
    assert item.result is IngestResult.UNKNOWN_TOUR and item.error.startswith(
        f"unknown tour {orphan.tour_uuid}"
    )
    bogota = timezone(timedelta(hours=-5))
    t = tour_in(started_at=datetime(2026, 3, 14, 1, 30, tzinfo=bogota))  # 06:30 UTC
    naive = det_in(t, start_time=datetime(2026, 3, 14, 6, 31), end_time=datetime(2026, 3, 14, 6, 32))
    store.ingest(dev, [t], [naive])
    rep = store.tour_report(str(t.uuid))[0]
    assert rep.started_at == T0 and rep.started_at.utcoffset() == timedelta(0)
    assert store.detection(dev, str(naive.uuid)).start_time == datetime(2026, 3, 14, 6, 31, tzinfo=UTC)


def test_device_status_and_last_sync_are_kept(store):
    dev = device(store)
    assert store.devices()[0].last_sync_at is None and store.devices()[0].status is None
    status = DeviceStatus(
        model_version="student 3",
        app_version="0.2.0",
        pending_detections=4,
        pending_clips=2,
        clips_stored=17,
        speech_suppressed=5,
        audio_paused=True,
        free_bytes=123456789,
    )
    store.ingest(dev, [], [], status)
    first = store.devices()[0]
    assert first.status == status and first.last_sync_at is not None
    store.ingest(dev, [], [])  # a batch without status keeps the last reported one
    second = store.devices()[0]
    assert second.status == status and second.last_sync_at >= first.last_sync_at
    assert store.authenticate(store.add_device("g2")).status is None


def test_ownership_between_devices(store):
    a, b = device(store, "a"), device(store, "b")
    t = tour_in()
    d = det_in(t)
    store.ingest(a, [t], [d])
    # b writes into a's tour, re-sends a's tour UUID (with an end time), re-uses a's detection UUID
    rep = store.ingest(b, [t.model_copy(update={"ended_at": T0 + timedelta(hours=1)})], [det_in(t), d])
    assert [i.result for i in rep.items] == [IngestResult.NOT_OWNER] * 3
    assert [i.error for i in rep.items] == [
        "tour belongs to another device",
        "tour belongs to another device",
        "uuid belongs to another device",
    ]
    assert store.tour_report(str(t.uuid))[0].ended_at is None  # a's tour untouched
    assert store.detection(b, str(d.uuid)) is None and store.detection(a, str(d.uuid)) is not None
    # clips: b may not store a clip under a's tour or detection, nor re-use a's clip UUID
    assert store.add_clip(b, clip_in(tour_uuid=str(t.uuid)), "/x") is ClipResult.NOT_OWNER
    assert store.add_clip(b, clip_in(detection_uuid=str(d.uuid)), "/x") is ClipResult.NOT_OWNER
    mine = clip_in(detection_uuid=str(d.uuid), tour_uuid=str(t.uuid))
    assert store.add_clip(a, mine, "/x") is ClipResult.ACCEPTED
    assert store.add_clip(b, mine.model_copy(update={"detection_uuid": None, "tour_uuid": None}), "/x") is (
        ClipResult.NOT_OWNER
    )
    # feedback: b may not flag a's detection nor re-use a's feedback UUID
    assert store.feedback(b, feedback_in(str(d.uuid), "wrong_species", correct_code="grekis")) is (
        FeedbackResult.NOT_OWNER
    )
    fb = feedback_in(str(d.uuid))
    assert store.feedback(a, fb) is FeedbackResult.ACCEPTED
    t_b = tour_in()
    d_b = det_in(t_b)
    store.ingest(b, [t_b], [d_b])
    assert store.feedback(b, fb.model_copy(update={"detection_uuid": d_b.uuid})) is FeedbackResult.NOT_OWNER
    # confirmations: each device pages only its own
    store.confirm(verdict(str(mine.uuid), a))
    assert [c.clip_uuid for c in store.confirmations_since(a, 0)] == [str(mine.uuid)]
    assert store.confirmations_since(b, 0) == []
    assert store.counts()["feedback"] == 1 and store.counts()["clips"] == 1


# ------------------------------------------------------------------------------------ clips
def test_clips_keep_source_offset_and_edge_top(store):
    dev = device(store)
    t = tour_in()
    d = det_in(t)
    store.ingest(dev, [t], [d])
    meta = clip_in(
        tour_uuid=str(t.uuid),
        detection_uuid=str(d.uuid),
        start_offset=1.5,
        source="H02_20230420_074000.ogg",
        source_offset=35.0,
        edge_top=[{"code": "rutjac1", "probability": 0.81}, {"code": "grekis", "probability": 0.1}],
    )
    assert store.add_clip(dev, meta, "/clips/ab/abab.ogg") is ClipResult.ACCEPTED
    assert store.add_clip(dev, meta, "/clips/ab/abab.ogg") is ClipResult.DUPLICATE
    got = store.clip(str(meta.uuid))
    assert got is not None
    assert (got.device_id, got.tour_uuid, got.detection_uuid) == (dev, str(t.uuid), str(d.uuid))
    assert (got.sha256, got.bytes, got.reason, got.path) == (
        "ab" * 32,
        1000,
        "uncertain",
        "/clips/ab/abab.ogg",
    )
    assert (got.start_offset, got.source, got.source_offset) == (1.5, "H02_20230420_074000.ogg", 35.0)
    assert [(e.code, e.probability) for e in got.edge_top] == [("rutjac1", 0.81), ("grekis", 0.1)]
    assert got.recorded_at == T0 and got.received_at.tzinfo is not None
    bare = clip_in(reason="random")  # no tour, detection, source: a random background sample
    assert store.add_clip(dev, bare, "/clips/x.ogg") is ClipResult.ACCEPTED
    b = store.clip(str(bare.uuid))
    assert (b.tour_uuid, b.detection_uuid, b.source, b.source_offset, b.edge_top) == (
        None,
        None,
        None,
        None,
        [],
    )
    assert [c.uuid for c in store.clips(tour_uuid=str(t.uuid))] == [str(meta.uuid)]
    assert {c.uuid for c in store.clips()} == {str(meta.uuid), str(bare.uuid)}
    assert len(store.clips(limit=1)) == 1
    assert store.clip("not-a-uuid") is None and store.clips(tour_uuid="not-a-uuid") == []


# ------------------------------------------------------------------------------------ confirmations
def test_confirm_first_writer_wins_and_cursor_pages(store):
    dev = device(store)
    t = tour_in()
    d = det_in(t)
    store.ingest(dev, [t], [d])
    clips = [clip_in(detection_uuid=str(d.uuid)) for _ in range(5)]
    for c in clips:
        store.add_clip(dev, c, "/x")
    first = store.confirm(verdict(str(clips[0].uuid), dev, True, detection_uuid=str(d.uuid)))
    assert (
        first.agree is True and first.detection_uuid == str(d.uuid) and first.species[0]["code"] == "rutjac1"
    )
    second = store.confirm(
        verdict(str(clips[0].uuid), dev, False, model="other")
    )  # a second replica's verdict
    assert second == first
    assert store.confirmation(str(clips[0].uuid)) == first and store.confirmation(str(clips[1].uuid)) is None
    for c, agree in zip(clips[1:], (False, None, True, True)):
        store.confirm(verdict(str(c.uuid), dev, agree))
    seqs = [c.seq for c in store.confirmations_since(dev, 0)]
    assert len(seqs) == 5 and seqs == sorted(seqs) and len(set(seqs)) == 5
    page = store.confirmations_since(dev, 0, limit=2)
    assert [c.seq for c in page] == seqs[:2]
    assert [c.seq for c in store.confirmations_since(dev, page[-1].seq, limit=10)] == seqs[2:]
    assert store.confirmations_since(dev, seqs[-1]) == []
    assert first.wire().keys() == {
        "seq",
        "clip_uuid",
        "detection_uuid",
        "edge_species",
        "agree",
        "species",
        "model",
        "created_at",
    }
    with pytest.raises(NotFound):
        store.confirm(verdict(str(uuid.uuid4()), dev))


# ------------------------------------------------------------------------------------ feedback
def test_feedback_and_the_relabelling_queue(store):
    dev = device(store)
    t = tour_in()
    d1, d2, d3 = det_in(t, "rutjac1"), det_in(t, "grekis"), det_in(t, "grekis")
    store.ingest(dev, [t], [d1, d2, d3])
    clip = clip_in(detection_uuid=str(d1.uuid), start_offset=2.0)
    store.add_clip(dev, clip, "/clips/one.ogg")
    wrong = feedback_in(str(d1.uuid), "wrong_species", correct_code="grekis", note="a kingfisher")
    assert store.feedback(dev, wrong) is FeedbackResult.ACCEPTED
    assert store.feedback(dev, wrong) is FeedbackResult.DUPLICATE
    assert store.feedback(dev, feedback_in(str(d2.uuid), "confirmed")) is FeedbackResult.ACCEPTED
    assert store.feedback(dev, feedback_in(str(d3.uuid), "not_an_animal")) is FeedbackResult.ACCEPTED
    assert store.feedback(dev, feedback_in(str(uuid.uuid4()))) is FeedbackResult.UNKNOWN_DETECTION
    queue = store.relabel_queue()
    assert len(queue) == 3
    by = {q.detection_uuid: q for q in queue}
    one = by[str(d1.uuid)]
    assert (one.feedback_uuid, one.kind, one.label, one.edge_species) == (
        str(wrong.uuid),
        "wrong_species",
        "grekis",
        "rutjac1",
    )
    assert (one.clip_uuid, one.clip_path, one.start_offset, one.note) == (
        str(clip.uuid),
        "/clips/one.ogg",
        2.0,
        "a kingfisher",
    )
    assert (one.tour_uuid, one.exported_at) == (str(t.uuid), None)
    assert by[str(d2.uuid)].label == "grekis" and by[str(d2.uuid)].clip_path is None
    assert by[str(d3.uuid)].label == ""
    assert store.mark_exported([q.feedback_uuid for q in queue] + ["not-a-uuid"]) == 3
    assert store.relabel_queue() == []
    again = store.relabel_queue(include_exported=True)
    assert len(again) == 3 and all(q.exported_at is not None for q in again)


# ------------------------------------------------------------------------------------ reports
def test_tour_report_and_summary(store):
    dev, other = device(store, "guide-1"), device(store, "guide-2")
    t1 = tour_in(guide="Ana")
    t2 = tour_in(guide="Beto", started_at=T0 + timedelta(days=1))
    a1, a2 = det_in(t1, "rutjac1", 30), det_in(t1, "rutjac1", 5)
    b1 = det_in(t1, "grekis", 60)
    c1 = det_in(t1, "bobfly1", 90)
    store.ingest(dev, [t1], [a1, a2, b1, c1])
    e1 = det_in(t2, "grekis", 0)
    store.ingest(other, [t2], [e1])
    for det, agree, owner in ((a1, True, dev), (b1, False, dev), (e1, None, other)):
        c = clip_in(detection_uuid=str(det.uuid))
        store.add_clip(owner, c, "/x")
        store.confirm(verdict(str(c.uuid), owner, agree, detection_uuid=str(det.uuid)))
    store.feedback(dev, feedback_in(str(b1.uuid), "wrong_species", correct_code="rutjac1"))
    store.feedback(dev, feedback_in(str(c1.uuid), "confirmed"))
    store.feedback(dev, feedback_in(str(c1.uuid), "confirmed"))  # two flags: still one detection

    reps = store.tour_report()
    assert [r.uuid for r in reps] == [str(t1.uuid), str(t2.uuid)]
    r1 = reps[0]
    assert (r1.guide, r1.device, r1.location, r1.started_at) == ("Ana", "guide-1", "El Silencio", T0)
    assert [s.code for s in r1.species] == ["rutjac1", "grekis", "bobfly1"]  # by first heard
    sp = {s.code: s for s in r1.species}
    assert sp["rutjac1"].detections == 2 and sp["rutjac1"].first_heard == T0 + timedelta(seconds=5)
    assert sp["rutjac1"].cloud_agree and sp["rutjac1"].confirmed and not sp["rutjac1"].flagged
    assert not sp["grekis"].confirmed and sp["grekis"].flagged
    assert sp["bobfly1"].detections == 1 and sp["bobfly1"].guide_confirmed and sp["bobfly1"].confirmed
    assert (r1.species_heard, r1.species_confirmed) == (3, 2)
    assert store.tour_report(str(t2.uuid))[0].species_confirmed == 0
    assert store.tour_report(str(uuid.uuid4())) == [] and store.tour_report("not-a-uuid") == []

    s = store.summary()
    assert s.tours == 2 and s.confirmations == 3
    assert s.disagreement_rate == 0.5  # one of the two compared clips disagreed
    assert s.mean_species_heard_per_tour == 2.0 and s.mean_species_confirmed_per_tour == 1.0
    assert list(s.per_day) == ["2026-03-14", "2026-03-15"]
    assert s.per_guide["Ana"].species_heard == 3 and s.per_guide["Ana"].species_confirmed == 2
    assert s.per_guide["Beto"].tours == 1


def test_empty_summary(store):
    s = store.summary()
    assert (s.tours, s.confirmations, s.disagreement_rate, s.per_day) == (0, 0, None, {})
    assert store.counts() == dict.fromkeys(
        ("devices", "tours", "detections", "clips", "confirmations", "feedback", "releases"), 0
    )


# ------------------------------------------------------------------------------------ releases
def test_releases_exactly_one_current(store):
    assert store.current_release() is None and store.releases() == []
    r1 = store.publish_release(
        "1", "a" * 64, "fv1-x", "/r/1.tar", {"name": "student", "metrics": {"auc": 0.9}}
    )
    assert r1.current and r1.manifest["metrics"] == {"auc": 0.9}
    store.publish_release("2", "b" * 64, "fv1-x", "/r/2.tar", {"name": "student"})
    cur = store.current_release()
    assert cur.version == "2" and cur.sha256 == "b" * 64 and cur.path == "/r/2.tar"
    assert [(r.version, r.current) for r in store.releases()] == [("1", False), ("2", True)]
    store.publish_release("1", "c" * 64, "fv1-x", "/r/1b.tar", {"name": "student"})  # republished
    assert store.current_release().sha256 == "c" * 64
    assert sum(r.current for r in store.releases()) == 1 and store.counts()["releases"] == 2


def test_release_signature_round_trip(store, opener):
    """Migration ``release_signatures``: a release's signature, key id, signed statement (the exact
    canonical text) and key rotations come back as stored; an unsigned release has none; a
    republished version replaces its signature; another replica reads the same."""
    from cloud.store import ReleaseSignature
    from shared_features.signature import canonical_json

    statement = {
        "format": "silencio-release-statement",
        "signature_version": 1,
        "name": "student",
        "version": "1",
        "sha256": "a" * 64,
        "bytes": 1234,
        "feature_fingerprint": "fv1-x",
        "labels_sha256": "b" * 64,
        "thresholds_sha256": None,
        "signed_at": "2025-01-01T00:00:00+00:00",
        "key_id": "0123456789abcdef",
    }
    rotation = {
        "old_key_id": "fedcba9876543210",
        "new_key_id": "0123456789abcdef",
        "new_public_key": "ed25519:" + "A" * 43 + "=",
        "created_at": "2024-12-31T00:00:00+00:00",
        "signature": "c2ln",
    }
    sig = ReleaseSignature("c2lnbmF0dXJl", "0123456789abcdef", statement, [rotation])
    rec = store.publish_release("1", "a" * 64, "fv1-x", "/r/1.tar", {"name": "student"}, sig)
    assert rec.signature == sig
    got = opener().current_release().signature
    assert got == sig and canonical_json(got.statement) == canonical_json(statement)
    assert got.statement["thresholds_sha256"] is None and got.key_rotations == [rotation]
    unsigned = store.publish_release("2", "b" * 64, "fv1-x", "/r/2.tar", {"name": "student"})
    assert unsigned.signature is None and store.current_release().signature is None
    resigned = ReleaseSignature("b3RoZXI=", "1111222233334444", {**statement, "key_id": "1111222233334444"})
    store.publish_release("1", "c" * 64, "fv1-x", "/r/1b.tar", {"name": "student"}, resigned)
    cur = store.current_release()
    assert cur.version == "1" and cur.signature == resigned and cur.signature.key_rotations == []
    assert {r.version: r.signature for r in store.releases()} == {"1": resigned, "2": None}


# ------------------------------------------------------------------------------------ concurrency
def test_concurrent_overlapping_ingest_stores_each_uuid_once(opener):
    """16 threads on two store instances (two replicas) send overlapping, repeated and shuffled
    batches for the same two devices: every UUID is accepted exactly once."""
    replicas = [opener(), opener()]
    devs = [device(replicas[0], "a"), device(replicas[0], "b")]
    tours = {d: [tour_in() for _ in range(3)] for d in devs}
    dets = {d: [det_in(t, at=i) for t in tours[d] for i in range(20)] for d in devs}
    results: list[tuple[str, IngestResult]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def client(n: int) -> None:
        rng = random.Random(n)
        st, dev = replicas[n % 2], devs[(n // 2) % 2]
        try:
            barrier.wait()
            for _ in range(4):
                batch = rng.sample(dets[dev], 25)
                out = st.ingest(dev, tours[dev], batch + batch[:3])
                with lock:
                    results.extend((i.uuid, i.result) for i in out.items)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {r for _, r in results} <= {IngestResult.ACCEPTED, IngestResult.DUPLICATE}
    accepted = Counter(u for u, r in results if r is IngestResult.ACCEPTED)
    assert max(accepted.values()) == 1  # never accepted twice
    sent = {u for u, _ in results}
    assert set(accepted) == sent  # and every UUID that was sent was accepted once
    counts = replicas[1].counts()
    n_dets = len({u for d in devs for u in (str(x.uuid) for x in dets[d])} & sent)
    assert (counts["tours"], counts["detections"]) == (6, n_dets)


def test_concurrent_confirmations_never_skip_a_cursor(opener):
    """Writers on two replicas confirm clips while a device pages ``since=cursor`` from a third
    store: the reader ends with every confirmation, in increasing seq, none skipped."""
    replicas = [opener(), opener()]
    reader_store = opener()
    dev = device(replicas[0])
    clips = [clip_in() for _ in range(60)]
    for c in clips:
        replicas[0].add_clip(dev, c, "/x")
    done = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for c in clips[k::6]:
                replicas[k % 2].confirm(verdict(str(c.uuid), dev, k % 2 == 0))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def reader() -> None:
        cursor = 0
        while True:
            last_round = done.is_set()
            page = reader_store.confirmations_since(dev, cursor, limit=7)
            seen.extend(c.seq for c in page)
            cursor = page[-1].seq if page else cursor
            if last_round and not page:
                return

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    r.join(60)
    assert errors == [] and not r.is_alive()
    all_seqs = [c.seq for c in reader_store.confirmations_since(dev, 0, limit=1000)]
    assert len(all_seqs) == 60
    assert seen == all_seqs  # in order, nothing skipped, nothing twice


# ------------------------------------------------------------------------------------ selection
def test_open_store_follows_the_database_url(postgres, tmp_path, monkeypatch):
    from cloud.settings import CloudSettings
    from cloud.store import open_store

    url = postgres.create_database(f"select_{next(_db_names)}")
    monkeypatch.setenv("SILENCIO_CLOUD_DATABASE_URL", url)
    st = open_store(CloudSettings())
    assert st.backend == "postgresql" and "password" not in st.describe()
    st.close()
    monkeypatch.setenv("SILENCIO_CLOUD_DATABASE_URL", "memory://")
    assert open_store(CloudSettings()).backend == "memory"
    monkeypatch.delenv("SILENCIO_CLOUD_DATABASE_URL")
    monkeypatch.setenv("SILENCIO_CLOUD_DB", str(tmp_path / "x.db"))
    st = open_store(CloudSettings())
    assert st.backend == "sqlite" and st.describe() == str(tmp_path / "x.db")
    st.close()
    with pytest.raises(StoreError, match="mysql"):
        open_store(CloudSettings(database_url="mysql://u@h/db"))
    # an operator who turned automatic migrations off is told what to run
    fresh = postgres.create_database(f"select_{next(_db_names)}")
    with pytest.raises(StoreError, match="silencio cloud migrate"):
        open_store(CloudSettings(database_url=fresh, migrate_on_start=False))


def test_unreachable_postgres_is_a_clear_error(tmp_path):
    from cloud.store.postgres import PostgresCloudStore

    url = f"postgresql://silencio:s3cret@/silencio?host={tmp_path}&connect_timeout=1"
    with pytest.raises(StoreError, match="did not accept a connection") as err:
        PostgresCloudStore(url, connect_timeout=2)
    assert "s3cret" not in str(err.value)


# ==================================================================================== console
# Users, sessions, reviewers' verdicts, pins, release switching and the console's page reads.
from cloud.errors import UserExists  # noqa: E402
from cloud.store import (  # noqa: E402
    DetectionStatus,
    QueueFilter,
    QueueReason,
    ReviewVerdict,
    UserRole,
)


def test_users_tokens_roles_and_revocation(store, opener):
    rev = store.add_user("ana", "reviewer")
    adm = store.add_user("bo", UserRole.ADMIN)
    ana = store.authenticate_user(rev)
    assert (ana.name, ana.role, ana.revoked, ana.is_admin) == ("ana", UserRole.REVIEWER, False, False)
    assert ana.created_at.tzinfo is not None
    assert store.authenticate_user(adm).is_admin
    device_token = store.add_device("guide-1")
    admin_device = store.add_device("office", Role.ADMIN)
    for bad in (None, "", "nope", device_token, admin_device):  # device tokens are never users
        with pytest.raises(Unauthorized):
            store.authenticate_user(bad)
    with pytest.raises(Unauthorized):  # and users are never devices
        store.authenticate(rev)
    with pytest.raises(UserExists, match="exists"):
        store.add_user("ana", "admin")
    with pytest.raises(ValueError, match="role"):
        store.add_user("x", "device")
    assert [(u.name, u.role) for u in store.users()] == [("ana", UserRole.REVIEWER), ("bo", UserRole.ADMIN)]
    sid, _ = store.create_session(ana.id, 3600)
    other_replica = opener()
    assert other_replica.session(sid).user.name == "ana"
    revoked = store.revoke_user("ana")
    assert revoked.revoked and revoked.revoked_at is not None
    with pytest.raises(Unauthorized, match="revoked"):
        other_replica.authenticate_user(rev)
    assert store.session(sid) is None and other_replica.session(sid) is None  # sessions end with it
    with pytest.raises(NotFound):
        store.revoke_user("nobody")
    assert store.authenticate_user(adm).name == "bo"


def test_sessions_expire_and_end(store, opener):
    user = store.authenticate_user(store.add_user("ana", "reviewer"))
    sid, csrf = store.create_session(user.id, 3600)
    assert sid != csrf and len(sid) >= 32 and len(csrf) >= 32
    s = opener().session(sid)  # another replica reads it
    assert s is not None and s.user == user and s.csrf_token == csrf
    assert s.expires_at > s.created_at and s.expires_at.tzinfo is not None
    assert store.session(None) is None and store.session("") is None and store.session("forged") is None
    old, _ = store.create_session(user.id, -1)  # born expired
    assert store.session(old) is None
    sid2, csrf2 = store.create_session(user.id, 60)
    assert csrf2 != csrf and store.session(sid2).csrf_token == csrf2
    store.delete_session(sid)
    assert store.session(sid) is None and store.session(sid2) is not None
    store.delete_session("never-existed")  # harmless
    with pytest.raises(NotFound):
        store.create_session(9999, 60)


def _clip_for(store: Store, dev: int, code: str = "rutjac1", **kw) -> tuple[str, str]:
    """A tour, one detection of ``code`` and a clip of it: (clip uuid, detection uuid)."""
    t = tour_in()
    d = det_in(t, code)
    store.ingest(dev, [t], [d])
    c = clip_in(detection_uuid=str(d.uuid), tour_uuid=str(t.uuid), **kw)
    store.add_clip(dev, c, "/clips/x.ogg")
    return str(c.uuid), str(d.uuid)


def test_review_verdicts_history_and_cursor(store):
    dev = device(store)
    clip, _ = _clip_for(store, dev)
    a = store.add_review_verdict(clip, "ana", "accept", "rutjac1")
    assert (a.clip_uuid, a.reviewer, a.verdict, a.species_code) == (
        clip,
        "ana",
        ReviewVerdict.ACCEPT,
        "rutjac1",
    )
    assert a.created_at.tzinfo is not None and uuid.UUID(a.uuid)
    b = store.add_review_verdict(clip, "bo", ReviewVerdict.RELABEL, "grekis")
    c = store.add_review_verdict(clip, "bo", "not_an_animal", None)
    d = store.add_review_verdict(clip, "ana", "skip", None)
    assert [v.seq for v in (a, b, c, d)] == sorted({a.seq, b.seq, c.seq, d.seq})  # increasing, unique
    assert store.review_verdicts() == [a, b, c, d]  # history kept, by seq
    assert store.review_verdicts(since_seq=b.seq) == [c, d] and store.review_verdicts(d.seq) == []
    for verdict, code in (("accept", None), ("relabel", ""), ("skip", "rutjac1"), ("not_an_animal", "x")):
        with pytest.raises(ValueError, match="species_code"):
            store.add_review_verdict(clip, "ana", verdict, code)
    with pytest.raises(ValueError, match="unknown verdict"):
        store.add_review_verdict(clip, "ana", "maybe", None)
    for missing in (str(uuid.uuid4()), "not-a-uuid"):
        with pytest.raises(NotFound):
            store.add_review_verdict(missing, "ana", "skip", None)
    assert len(store.review_verdicts()) == 4
    assert store.review_item(clip).verdicts == [a, b, c, d]


def test_concurrent_verdicts_never_skip_a_cursor(opener):
    """Reviewers on two replicas store verdicts while the loop pages ``since_seq`` from a third
    store: it ends with every verdict, in increasing seq, none skipped."""
    replicas = [opener(), opener()]
    reader_store = opener()
    dev = device(replicas[0])
    clips = [_clip_for(replicas[0], dev)[0] for _ in range(8)]
    done = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(10):
                replicas[k % 2].add_review_verdict(clips[(k + i) % 8], f"r{k}", "skip", None)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def reader() -> None:
        cursor = 0
        while True:
            last_round = done.is_set()
            page = reader_store.review_verdicts(cursor)
            seen.extend(v.seq for v in page)
            cursor = page[-1].seq if page else cursor
            if last_round and not page:
                return

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    r.join(60)
    assert errors == [] and not r.is_alive()
    all_seqs = [v.seq for v in reader_store.review_verdicts()]
    assert len(all_seqs) == 40 and seen == all_seqs


def test_pins_and_release_switching(store):
    dev = device(store)
    clip, _ = _clip_for(store, dev)
    assert store.clip(clip).pinned is False
    assert store.pin_clip(clip, True).pinned is True and store.clip(clip).pinned is True
    assert store.clips()[0].pinned is True
    assert store.pin_clip(clip, False).pinned is False
    with pytest.raises(NotFound):
        store.pin_clip(str(uuid.uuid4()), True)
    with pytest.raises(NotFound):
        store.set_current_release("1")
    store.publish_release("1", "a" * 64, "fv1-x", "/r/1.tar", {"name": "student"})
    store.publish_release("2", "b" * 64, "fv1-x", "/r/2.tar", {"name": "student", "loop_report": "r.md"})
    back = store.set_current_release("1")  # roll back
    assert back.version == "1" and back.current and store.current_release().version == "1"
    assert [(r.version, r.current) for r in store.releases()] == [("1", True), ("2", False)]
    assert store.set_current_release("2").manifest["loop_report"] == "r.md"  # promote
    assert sum(r.current for r in store.releases()) == 1 and store.current_release().version == "2"
    with pytest.raises(NotFound):
        store.set_current_release("3")
    assert store.current_release().version == "2"


def _queue_world(store: Store) -> dict[str, str]:
    """Two devices, clips of every queue reason, judged in every way."""
    a, b = device(store, "guide-a"), device(store, "guide-b")
    t = tour_in(latitude=6.8, longitude=-74.1)
    da = [det_in(t, code, at=i * 60) for i, code in enumerate(["rutjac1", "grekis", "bobfly1", "rutjac1"])]
    store.ingest(a, [t], da)
    tb = tour_in(guide="Beto", started_at=T0 + timedelta(days=1))
    db = det_in(tb, "grekis", at=86400)
    store.ingest(b, [tb], [db])

    def clip(dev, det, reason, day=0, **kw):
        c = clip_in(
            detection_uuid=None if det is None else str(det.uuid),
            tour_uuid=None if det is None else str(det.tour_uuid),
            reason=reason,
            recorded_at=T0 + timedelta(days=day),
            **kw,
        )
        assert store.add_clip(dev, c, f"/clips/{reason}.ogg") is ClipResult.ACCEPTED
        return str(c.uuid)

    w = {
        "random": clip(a, None, "random"),
        "uncertain": clip(a, da[0], "uncertain", edge_top=[{"code": "rutjac1", "probability": 0.4}]),
        "disagree": clip(a, da[1], "uncertain"),
        "flagged": clip(a, da[2], "flagged"),
        "guide_flag": clip(a, da[3], "uncertain"),
        "other_device": clip(b, db, "uncertain", day=1),
    }
    store.confirm(
        verdict(
            w["disagree"],
            a,
            False,
            detection_uuid=str(da[1].uuid),
            edge_species="grekis",
            species=[{"code": "bobfly1", "probability": 0.8}],
        )
    )
    store.confirm(verdict(w["uncertain"], a, True, detection_uuid=str(da[0].uuid)))
    store.feedback(a, feedback_in(str(da[3].uuid), "wrong_species", correct_code="grekis"))
    w.update(
        det_rutjac=str(da[0].uuid),
        det_grekis=str(da[1].uuid),
        det_bobfly=str(da[2].uuid),
        det_flag=str(da[3].uuid),
        tour=str(t.uuid),
        tour_b=str(tb.uuid),
        det_b=str(db.uuid),
    )
    return w


def test_review_queue_order_filters_and_items(store):
    w = _queue_world(store)
    page = store.review_queue()
    order = [i.clip.uuid for i in page.items]
    assert page.total == 6
    # disagreement, then guide flags (sent flagged, or flagged by feedback), uncertain, random
    assert order[0] == w["disagree"] and set(order[1:3]) == {w["flagged"], w["guide_flag"]}
    assert set(order[3:5]) == {w["uncertain"], w["other_device"]} and order[5] == w["random"]
    assert [i.reason for i in page.items] == [
        QueueReason.DISAGREEMENT,
        QueueReason.FLAGGED,
        QueueReason.FLAGGED,
        QueueReason.UNCERTAIN,
        QueueReason.UNCERTAIN,
        QueueReason.RANDOM,
    ]
    first = page.items[0]
    assert first.detection.species_code == "grekis" and first.confirmation.agree is False
    assert first.confirmation.species[0]["code"] == "bobfly1" and first.device == "guide-a"
    flag = next(i for i in page.items if i.clip.uuid == w["guide_flag"])
    assert (flag.guide_kind, flag.guide_code) == ("wrong_species", "grekis")
    unc = store.review_item(w["uncertain"])
    assert [e.code for e in unc.clip.edge_top] == ["rutjac1"] and unc.guide_kind is None
    assert store.review_item(w["random"]).detection is None and store.review_item("nope") is None
    # filters: species (edge's or cloud's top), device, recorded date, reason; paging
    assert {i.clip.uuid for i in store.review_queue(QueueFilter(species="bobfly1")).items} == {
        w["disagree"],
        w["flagged"],
    }
    assert [i.clip.uuid for i in store.review_queue(QueueFilter(device="guide-b")).items] == [
        w["other_device"]
    ]
    assert store.review_queue(QueueFilter(since=T0 + timedelta(hours=12))).total == 1
    assert store.review_queue(QueueFilter(until=T0 + timedelta(hours=12))).total == 5
    assert store.review_queue(QueueFilter(reason=QueueReason.FLAGGED)).total == 2
    assert store.review_queue(QueueFilter(species="zzz")).items == []
    two = store.review_queue(limit=2, offset=2)
    assert [i.clip.uuid for i in two.items] == order[2:4] and two.total == 6
    assert store.review_queue(offset=50) == type(two)([], 6)
    # a verdict takes a clip out; a skip sends it to the back
    store.add_review_verdict(w["disagree"], "ana", "relabel", "bobfly1")
    store.add_review_verdict(w["flagged"], "ana", "skip", None)
    after = [i.clip.uuid for i in store.review_queue().items]
    assert w["disagree"] not in after and after[-1] == w["flagged"] and len(after) == 5
    assert store.console_overview().review_pending == 5


def test_judgements_overview_timeline_species_and_export(store):
    w = _queue_world(store)
    store.add_review_verdict(w["disagree"], "ana", "relabel", "bobfly1")  # grekis → bobfly1
    store.add_review_verdict(w["uncertain"], "ana", "accept", "rutjac1")
    store.add_review_verdict(w["flagged"], "bo", "not_an_animal", None)
    # the timeline: every detection in time order with its judgement and clips
    tl = store.tour_timeline(w["tour"])
    assert (
        tl.tour.guide == "Ana"
        and tl.tour.latitude == 6.8
        and tl.tour.detections == 4
        and tl.tour.species == 3
    )
    assert [e.detection.species_code for e in tl.entries] == ["rutjac1", "grekis", "bobfly1", "rutjac1"]
    j = {e.detection.uuid: e.judgement for e in tl.entries}
    assert j[w["det_rutjac"]].status is DetectionStatus.CONFIRMED and j[w["det_rutjac"]].reviewer == "ana"
    assert (
        j[w["det_grekis"]].status is DetectionStatus.REJECTED and j[w["det_grekis"]].corrected_to == "bobfly1"
    )
    assert j[w["det_grekis"]].verified_by == "reviewer" and j[w["det_grekis"]].cloud_agree is False
    assert j[w["det_bobfly"]].status is DetectionStatus.REJECTED and j[w["det_bobfly"]].corrected_to == ""
    assert j[w["det_flag"]].verified_by == "guide" and j[w["det_flag"]].corrected_to == "grekis"
    assert {e.detection.uuid: e.clip_uuids for e in tl.entries}[w["det_grekis"]] == [w["disagree"]]
    assert list(tl.species) == ["rutjac1", "grekis", "bobfly1"]
    # every clip recorded on the tour (the random sample has no tour), its cloud top and latest verdict
    tc = {c.clip.uuid: c for c in tl.clips}
    assert set(tc) == {w["uncertain"], w["disagree"], w["flagged"], w["guide_flag"]}
    assert [c.clip.recorded_at for c in tl.clips] == sorted(c.clip.recorded_at for c in tl.clips)
    assert tc[w["disagree"]].cloud_top == "bobfly1" and tc[w["disagree"]].latest.species_code == "bobfly1"
    assert (
        tc[w["flagged"]].latest.verdict is ReviewVerdict.NOT_AN_ANIMAL and tc[w["guide_flag"]].latest is None
    )
    assert tc[w["guide_flag"]].cloud_top is None
    assert store.tour_timeline(str(uuid.uuid4())) is None and store.tour_timeline("x") is None
    tours = store.tours()
    assert [t.uuid for t in tours] == [w["tour_b"], w["tour"]]  # newest first
    assert (tours[0].device, tours[0].detections) == ("guide-b", 1)
    assert [t.uuid for t in store.tours(limit=1, offset=1)] == [w["tour"]]
    # the overview
    ov = store.console_overview()
    assert ov.tours_per_day == {"2026-03-14": 1, "2026-03-15": 1}
    sp = {s.code: s for s in ov.species}
    assert (sp["rutjac1"].detections, sp["rutjac1"].confirmed, sp["rutjac1"].rejected) == (2, 1, 1)
    assert (sp["grekis"].detections, sp["grekis"].confirmed, sp["grekis"].rejected) == (2, 0, 1)
    assert (sp["bobfly1"].confirmed, sp["bobfly1"].rejected) == (0, 1)
    assert [(r.day, r.compared, r.disagreements) for r in ov.disagreement_per_day] == [("2026-03-14", 2, 1)]
    assert ov.disagreement_per_day[0].rate == 0.5
    assert [d.name for d in ov.devices] == ["guide-a", "guide-b"] and ov.review_pending == 3
    assert ov.counts["clips"] == 6 and ov.counts["detections"] == 5
    # a species page: detections per day, best clips (pinned first), confusions both ways
    store.pin_clip(w["guide_flag"], True)
    page = store.species_page("rutjac1")
    assert page.detections == 2 and [
        (d.day, d.detections, d.confirmed, d.rejected) for d in page.per_day
    ] == [("2026-03-14", 2, 1, 1)]
    assert [b.clip.uuid for b in page.best_clips] == [w["guide_flag"], w["uncertain"]]
    assert page.best_clips[1].edge_confidence == 0.7 and page.best_clips[1].cloud_probability == 0.9
    assert [(c.code, c.guide) for c in page.confused_with] == [("grekis", 1)]
    grekis = store.species_page("grekis")
    assert [(c.code, c.reviewer) for c in grekis.confused_with] == [("bobfly1", 1)]
    assert [(c.code, c.guide) for c in grekis.mistaken_for] == [("rutjac1", 1)]
    bob = store.species_page("bobfly1")
    assert [(c.code, c.reviewer) for c in bob.mistaken_for] == [("grekis", 1)]
    assert [(c.code, c.reviewer) for c in bob.confused_with] == [("", 1)]  # not an animal
    assert w["disagree"] in {b.clip.uuid for b in bob.best_clips}  # relabelled to it
    assert store.species_page("nobody").detections == 0
    # export: a date range, in (start time, uuid) order, paged by key
    rows = store.export_detections(T0, T0 + timedelta(days=2))
    assert len(rows) == 5 and [r.key for r in rows] == sorted(r.key for r in rows)
    first = rows[0]
    assert (first.guide, first.device, first.latitude, first.clip_path) == (
        "Ana",
        "guide-a",
        6.8,
        "/clips/uncertain.ogg",
    )
    assert first.judgement.status is DetectionStatus.CONFIRMED
    assert [
        r.key for r in store.export_detections(T0, T0 + timedelta(days=2), after=rows[1].key, limit=2)
    ] == [r.key for r in rows[2:4]]
    assert len(store.export_detections(T0, T0 + timedelta(hours=1))) == 4
    assert store.export_detections(T0 - timedelta(days=9), T0) == []
