"""The cloud SIGKILLed mid-ingest, 20 times: a real ``silencio cloud serve`` (SQLite store, BirdNET
alone) is killed — the server and its workers at once, as a crashed machine would be — while a
device keeps syncing (the real edge client, in a thread, retrying whenever the cloud is away), and
started again after each kill. At the end everything the device recorded is on the cloud exactly
once: every detection, tour and clip stored once, one confirmation per clip, every clip file
whole, the database intact, nothing pending on the device."""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from cloud.replicas import ServeProcess, free_port
from edge.errors import SyncError
from edge.records import ClipReason, NewClip, NewDetection, NewTour
from edge.store import open_store
from edge.sync import SyncClient
from tests.conftest import MINI, REPO

from .conftest import register, serve_env

KILLS = 20
CODES = ("rutjac1", "grekis", "bobfly1", "cattyr", "trokin")


def _record(st, rnd: int, clip_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """One round of a tour: 40 detections and two clips (real audio of the reserve)."""
    tour = st.start_tour(NewTour(f"guide-{rnd}", "El Silencio"))
    t0 = datetime(2026, 3, 14, 6, 0, tzinfo=UTC) + timedelta(hours=rnd)
    dets = []
    for i in range(40):
        start = t0 + timedelta(seconds=8 * i)
        u = st.add_detection(
            NewDetection(
                tour,
                CODES[i % 5],
                start.isoformat(),
                (start + timedelta(seconds=5)).isoformat(),
                8.0 * i,
                8.0 * i + 5,
                0.8,
                "medium",
                "kill-test 1",
            )
        )
        st.close_detection(u)
        dets.append(u)
    x, sr = sf.read(MINI / "train_soundscapes" / "H02_20230420_074000.ogg", dtype="float32")
    for j in range(2):
        start = int(((rnd * 2 + j) * 2.3 % 50) * sr)
        buf = io.BytesIO()
        sf.write(buf, x[start : start + 5 * sr], sr, format="OGG", subtype="VORBIS")
        data = buf.getvalue()
        path = clip_dir / f"{rnd}-{j}.ogg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        st.add_clip(
            NewClip(str(path), sha, len(data), ClipReason.UNCERTAIN, tour, dets[j], source="microphone")
        )
    st.end_tour(tour)


class Device(threading.Thread):
    """Syncs until told to stop and nothing is pending; counts requests in flight."""

    def __init__(self, db: Path, url: str, token: str) -> None:
        super().__init__(name="device", daemon=True)
        self.db, self.url, self.token = db, url, token
        self.posting: str | None = None  # the ingest request in flight, if any
        self.runs = self.failed = 0
        self.done = threading.Event()
        self.error: BaseException | None = None

    def _hooks(self) -> dict:
        def start(request: httpx.Request) -> None:
            self.posting = request.url.path if request.method == "POST" else None

        def end(response: httpx.Response) -> None:
            self.posting = None

        return {"request": [start], "response": [end]}

    def run(self) -> None:
        st = open_store(self.db)
        client = SyncClient(st, self.url, self.token, retries=2, backoff=0.2, timeout=60, batch=10)
        client.http.event_hooks = self._hooks()
        try:
            while not (self.done.is_set() and st.pending().total == 0):
                self.runs += 1
                try:
                    client.run()
                except SyncError:
                    self.failed += 1
                    time.sleep(0.3)
                finally:
                    self.posting = None  # a request the kill cut off never reaches its response hook
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            client.close()
            st.close()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_cloud_sigkilled_mid_ingest_20_times_device_retries_exactly_once(tmp_path):
    from cloud.settings import CloudSettings
    from cloud.store import CloudStore

    home = tmp_path / "cloud"
    devices, _ = register(home, ["kill-device"])
    port = free_port()
    env = serve_env(home)
    edge_db = tmp_path / "edge" / "edge.db"
    writer = open_store(edge_db)
    _record(writer, 0, tmp_path / "clips")
    rng = random.Random(20)
    server = ServeProcess(port, env, home / "serve-0.log", cwd=REPO).start()
    server.wait_ready(300)
    device = Device(edge_db, server.url, devices["kill-device"])
    device.start()
    mid_request = 0
    try:
        for k in range(KILLS):
            _record(writer, k + 1, tmp_path / "clips")  # new work for this round
            deadline = time.monotonic() + 60
            while device.posting is None and time.monotonic() < deadline:  # the device is ingesting …
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.2))  # … and a moment later, wherever it got to
            mid_request += device.posting is not None
            assert server.proc is not None
            os.killpg(server.proc.pid, signal.SIGKILL)  # the server and every worker, at once
            server.stop()
            server = ServeProcess(port, env, home / f"serve-{k + 1}.log", cwd=REPO).start()
            server.wait_ready(300)
        device.done.set()
        device.join(600)
        assert not device.is_alive(), "the device did not finish syncing"
        assert device.error is None, device.error
    finally:
        device.done.set()
        server.stop()
    # ------------------------------------------------------------------ the device: nothing pending
    assert writer.pending().total == 0, writer.pending()
    dets, clips = writer.detections(), writer.clips()
    tours = {d.tour_uuid for d in dets}
    assert len(dets) == 40 * (KILLS + 1) and len(clips) == 2 * (KILLS + 1)
    assert all(d.synced_at for d in dets) and all(c.synced_at for c in clips)
    writer.close()
    # ------------------------------------------------------------------ the cloud: everything once
    store = CloudStore(CloudSettings(home=home).db_path)
    try:
        assert store.integrity() == "ok"
        counts = store.counts()
        assert counts["detections"] == len(dets) and counts["tours"] == len(tours)
        assert counts["clips"] == len(clips) == counts["confirmations"]
        dev = store.authenticate(devices["kill-device"])
        for d in dets:
            assert store.detection(dev.id, d.uuid) is not None
        for c in clips:
            row = store.clip(c.uuid)
            assert row is not None and store.confirmation(c.uuid) is not None
            assert hashlib.sha256(Path(row.path).read_bytes()).hexdigest() == c.sha256  # whole
    finally:
        store.close()
    assert mid_request >= KILLS // 2, f"only {mid_request} kills hit an ingest request in flight"
    print(
        f"\n{KILLS} SIGKILLs ({mid_request} with an ingest request in flight), {device.runs} device sync runs "
        f"({device.failed} cut off); {len(dets)} detections, {len(tours)} tours, {len(clips)} clips: "
        "each stored once"
    )
