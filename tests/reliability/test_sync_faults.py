"""Sync through 100 rounds of faults: each round the device records more (tours, detections, clips,
a guide's feedback), then syncs with the real edge client against the real cloud app (in-process)
while the transport injects faults at random requests — connection refused, a timeout, the
connection dropped while uploading, a 500, and the worst one: the cloud processed the request but
the answer never arrived. At the end every item is on the cloud exactly once: the cloud *accepted*
each UUID once across every answer it produced (lost ones included), stored it once, and the
device has nothing pending; every clip's confirmation came back."""

from __future__ import annotations

import io
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from edge.errors import SyncError
from edge.records import ClipReason, GuideVerdict, NewClip, NewDetection, NewTour
from edge.store import open_store
from edge.sync import SyncClient
from tests.conftest import MINI, cloud_asgi

ROUNDS = 100
KINDS = ("connect", "timeout", "dropped_upload", "500", "lost_response")


class FaultPlan(httpx.BaseTransport):
    """Forwards to the in-process cloud; the requests whose index (in the current run) is in
    ``plan`` fail with the fault named there. Keeps every answer the cloud produced."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.plan: dict[int, str] = {}
        self.n = 0
        self.injected: Counter[str] = Counter()
        self.answers: list[tuple[str, dict]] = []  # (path, JSON) of every answer the cloud gave

    def arm(self, plan: dict[int, str]) -> None:
        self.plan, self.n = plan, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        kind = self.plan.get(self.n)
        self.n += 1
        if kind is not None:
            self.injected[kind] += 1
        if kind == "connect":
            raise httpx.ConnectError("connection refused", request=request)
        if kind == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if kind == "dropped_upload":
            raise httpx.WriteError("connection reset during upload", request=request)
        if kind == "500":
            return httpx.Response(500, json={"error": "injected", "status": 500}, request=request)
        resp = self.inner.handle_request(request)
        resp.read()
        if resp.status_code == 200 and request.method == "POST":
            self.answers.append((request.url.path, resp.json()))
        if kind == "lost_response":  # processed by the cloud; the device never hears
            raise httpx.ReadError("connection lost before the response", request=request)
        return httpx.Response(resp.status_code, headers=resp.headers, content=resp.content, request=request)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):  # type: ignore[no-untyped-def]
    from starlette.testclient import TestClient

    from cloud.settings import CloudSettings
    from cloud.store import CloudStore

    home = tmp_path_factory.mktemp("cloud")
    mp = pytest.MonkeyPatch()
    mp.setenv("SILENCIO_HOME", str(home))
    mp.setenv("SILENCIO_CLOUD_TAXONOMY", str(MINI / "taxonomy.csv"))
    store = CloudStore(CloudSettings().db_path)
    token = store.add_device("faulty-network")
    with TestClient(cloud_asgi(), raise_server_exceptions=False) as tc:
        yield {"client": tc, "token": token, "store": store, "clips": home / "cloud" / "clips"}
    store.close()
    mp.undo()


def _clip(path: Path, seed: int) -> tuple[int, str]:
    import hashlib

    rng = np.random.default_rng(seed)
    t = np.arange(32_000 * 5) / 32_000
    x = (0.2 * np.sin(2 * np.pi * (2000 + 100 * seed) * t) + 0.01 * rng.standard_normal(t.size)).astype(
        np.float32
    )
    buf = io.BytesIO()
    sf.write(buf, x, 32_000, format="OGG", subtype="VORBIS")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return len(buf.getvalue()), hashlib.sha256(buf.getvalue()).hexdigest()


def _record(st, labels, rnd: int, tour: str, clip_dir: Path) -> None:  # type: ignore[no-untyped-def]
    t0 = datetime(2026, 3, 14, 6, 0, tzinfo=UTC) + timedelta(minutes=rnd)
    for i in range(3):
        start = t0 + timedelta(seconds=10 * i)
        u = st.add_detection(
            NewDetection(
                tour,
                labels[(rnd + i) % 5].code,
                start.isoformat(),
                (start + timedelta(seconds=5)).isoformat(),
                10.0 * i,
                10.0 * i + 5,
                0.9,
                "high",
                "fault-test 1",
            )
        )
        st.close_detection(u)
    if rnd % 5 == 0:  # a clip of the first detection
        det = st.detections(tour)[-3]
        path = clip_dir / f"{rnd}.ogg"
        size, sha = _clip(path, rnd)
        st.add_clip(NewClip(str(path), sha, size, ClipReason.UNCERTAIN, tour, det.uuid, source="microphone"))
    if rnd % 10 == 3:
        det = st.detections(tour)[-1]
        st.add_feedback(det.uuid, GuideVerdict.CONFIRMED, None, None)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_100_rounds_of_sync_faults_every_item_exactly_once(tmp_path, cloud):
    from shared_features import LabelSpace

    labels = LabelSpace.from_taxonomy_csv(MINI / "taxonomy.csv")
    st = open_store(tmp_path / "edge.db")
    faults = FaultPlan(cloud["client"]._transport)
    client = SyncClient(
        st,
        "http://testserver",
        cloud["token"],
        transport=faults,
        retries=1,
        batch=2,  # at least three requests per run (two sync batches, confirmations): room for faults
        backoff=0.0,
        sleep=lambda s: None,
    )
    rng = random.Random(100)
    failed_runs = 0
    tour = ""
    for rnd in range(ROUNDS):
        if rnd % 10 == 0:
            if tour:
                st.end_tour(tour)
            tour = st.start_tour(NewTour(f"guide-{rnd // 10}", "El Silencio"))
        _record(st, labels, rnd, tour, tmp_path / "clips")
        first = rng.randrange(0, 3)  # the fault hits one of the first three requests of the run …
        plan = {first: rng.choice(KINDS)}
        if rng.random() < 0.4:  # … and sometimes its retry too: the run fails, the next one resends
            plan[first + 1] = rng.choice(KINDS)
        faults.arm(plan)
        try:
            client.run()
        except SyncError:
            failed_runs += 1
    st.end_tour(tour)
    faults.arm({})
    client.run()  # the network is back
    client.run()  # and once more: nothing left to send or fetch

    injected = sum(faults.injected.values())
    assert injected >= ROUNDS and set(faults.injected) == set(KINDS), faults.injected
    assert failed_runs > 0
    assert st.pending().total == 0, st.pending()
    # ------------------------------------------------ accepted exactly once across every answer
    accepted: Counter[str] = Counter()
    clip_fresh: Counter[str] = Counter()
    fb_fresh: Counter[str] = Counter()
    for path, body in faults.answers:
        if path == "/v1/sync":
            assert body["rejected"] == []
            accepted.update(str(u) for u in body["accepted"])
        elif path == "/v1/clips" and not body["duplicate"]:
            clip_fresh[str(body["uuid"])] += 1
        elif path == "/v1/feedback" and not body["duplicate"]:
            fb_fresh[str(body["uuid"])] += 1
    dets = st.detections()
    tours = {d.tour_uuid for d in dets}
    clips = st.clips()
    feedback_uuids = {str(u) for p, b in faults.answers if p == "/v1/feedback" for u in [b["uuid"]]}
    assert len(dets) == 3 * ROUNDS and len(clips) == ROUNDS // 5 and len(tours) == ROUNDS // 10
    assert set(accepted) == {d.uuid for d in dets} | tours and set(accepted.values()) == {1}
    assert set(clip_fresh) == {c.uuid for c in clips} and set(clip_fresh.values()) == {1}
    assert len(fb_fresh) == ROUNDS // 10 and set(fb_fresh.values()) == {1} and set(fb_fresh) == feedback_uuids
    # ------------------------------------------------ stored exactly once
    counts = cloud["store"].counts()
    assert counts["detections"] == len(dets) and counts["tours"] == len(tours)
    assert counts["clips"] == len(clips) == counts["confirmations"] and counts["feedback"] == ROUNDS // 10
    files = [p for p in cloud["clips"].rglob("*") if p.is_file()]
    assert len(files) == len(clips) and not [p for p in files if p.suffix == ".part"]
    # ------------------------------------------------ every confirmation came back, once
    linked = {c.detection_uuid for c in clips}
    assert all(d.status.value in ("confirmed", "disputed") for d in dets if d.uuid in linked)
    assert all(d.status.value == "pending" for d in dets if d.uuid not in linked)
    print(
        f"\n{ROUNDS} rounds, {injected} faults injected {dict(faults.injected)}, {failed_runs} runs failed; "
        f"{len(dets)} detections, {len(tours)} tours, {len(clips)} clips, {ROUNDS // 10} feedback: "
        "each accepted and stored once"
    )
