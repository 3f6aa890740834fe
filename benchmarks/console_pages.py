"""Server time of the console's pages on a big store: 100,000 detections, 5,000 clips (4,000
confirmed by the cloud, a fifth of those disagreeing), 1,000 reviewer verdicts, 600 guide flags,
500 tours over 180 days, 10 devices, 206 species (a long tail), 3 releases.

    .venv/bin/python benchmarks/console_pages.py [--backends sqlite,postgresql] [--repeat 30]

Each page is requested ``--repeat`` times (after two warm-up requests) through the console's ASGI
app in-process (Starlette's TestClient: routing, session check, store reads, template rendering;
no network); p50 / p95 per page, with the overview's aggregate cache off (every request computes
everything), then the overview and species index once more with the default 10 s cache.
Baselines in the same run: every page on an *empty* store, and
``Store.summary()`` (what the API's ``/v1/reports/summary`` computes) on the big store. The goal is
p95 under 300 ms on this machine. The store is filled through its own operations (sync batches,
clip uploads, confirmations, verdicts), which takes a minute or two.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from benchmarks._table import table  # noqa: E402

DETECTIONS, CLIPS, CONFIRMED, VERDICTS, FLAGS, TOURS, DEVICES, DAYS = (
    100_000,
    5_000,
    4_000,
    1_000,
    600,
    500,
    10,
    180,
)
T0 = datetime(2025, 9, 1, 6, 0, tzinfo=UTC)


def fill(store, home: Path, seed: int = 0) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Fill ``store`` through its operations; returns handles for the pages (a tour, a clip, a species)."""
    from cloud.schemas import ClipMeta, DetectionIn, DeviceStatus, FeedbackIn, TourIn
    from cloud.store import NewConfirmation
    from shared_features import LabelSpace

    rng = random.Random(seed)
    codes = LabelSpace.default().codes
    weights = [1.0 / (i + 1) ** 0.8 for i in range(len(codes))]  # a long tail of rare species
    audio = home / "clip.ogg"
    from tests.console.world import clip_audio

    audio.write_bytes(clip_audio(6.0))
    store.add_user("bench", "admin")
    devs = []
    for i in range(DEVICES):
        tok = store.add_device(f"guide-device-{i:02d}")
        devs.append(store.authenticate(tok).id)
    tours: list[tuple[TourIn, int]] = []
    for i in range(TOURS):
        start = T0 + timedelta(days=rng.randrange(DAYS), hours=rng.choice([6, 7, 15, 16]))
        t = TourIn(
            uuid=uuid.uuid4(),
            guide=f"Guide {i % 25}",
            location="El Silencio",
            latitude=6.77 + rng.random() / 50,
            longitude=-74.2 + rng.random() / 50,
            started_at=start,
            ended_at=start + timedelta(hours=3),
        )
        tours.append((t, devs[i % DEVICES]))
    per_tour = DETECTIONS // TOURS
    dets: list[tuple[DetectionIn, int]] = []
    for t, dev in tours:
        batch = []
        for k in range(per_tour):
            at = t.started_at + timedelta(seconds=k * (3 * 3600 / per_tour) + rng.random())
            conf = rng.random()
            batch.append(
                DetectionIn(
                    uuid=uuid.uuid4(),
                    tour_uuid=t.uuid,
                    species_code=rng.choices(codes, weights)[0],
                    start_time=at,
                    end_time=at + timedelta(seconds=3),
                    confidence=conf,
                    band="high" if conf > 0.8 else "medium" if conf > 0.5 else "low",
                    model_version="student 3",
                )
            )
        status = DeviceStatus(
            model_version="student 3",
            app_version="0.3.0",
            pending_detections=rng.randrange(50),
            pending_clips=rng.randrange(10),
            clips_stored=rng.randrange(5000),
            speech_suppressed=rng.randrange(100),
            free_bytes=rng.randrange(10**9, 10**11),
        )
        for j in range(0, len(batch), 500):
            rep = store.ingest(dev, [t] if j == 0 else [], batch[j : j + 500], status)
            assert all(r.result.stored for r in rep.items)
        dets += [(d, dev) for d in batch]
    chosen = rng.sample(dets, CLIPS)
    clip_ids = []
    for n, (d, dev) in enumerate(chosen):
        meta = ClipMeta(
            uuid=uuid.uuid4(),
            tour_uuid=d.tour_uuid,
            detection_uuid=d.uuid,
            sha256="ab" * 32,
            bytes=1000,
            reason=rng.choice(["uncertain", "uncertain", "random", "flagged"]),
            recorded_at=d.start_time,
            start_offset=1.0,
            edge_top=[
                {"code": d.species_code, "probability": d.confidence},
                {"code": rng.choice(codes), "probability": 0.1},
            ],
        )
        store.add_clip(dev, meta, str(audio))
        clip_ids.append((str(meta.uuid), d, dev))
        if n < CONFIRMED:
            agree = rng.random() > 0.2
            top = d.species_code if agree else rng.choice(codes)
            store.confirm(
                NewConfirmation(
                    clip_uuid=str(meta.uuid),
                    device_id=dev,
                    detection_uuid=str(d.uuid),
                    edge_species=d.species_code,
                    agree=agree,
                    species=[{"code": top, "probability": 0.8}],
                    model="ensemble 7",
                )
            )
    for d, dev in rng.sample(dets, FLAGS):
        store.feedback(
            dev,
            FeedbackIn(
                uuid=uuid.uuid4(),
                detection_uuid=d.uuid,
                kind=rng.choice(["wrong_species", "not_an_animal", "confirmed"]),
                correct_code=rng.choice(codes),
                created_at=d.start_time,
            ),
        )
    for clip, d, _ in rng.sample(clip_ids, VERDICTS):
        v = rng.choice(["accept", "relabel", "not_an_animal", "skip"])
        code = d.species_code if v == "accept" else rng.choice(codes) if v == "relabel" else None
        store.add_review_verdict(clip, "bench", v, code)
    for v in ("1", "2", "3"):
        store.publish_release(
            v,
            v * 64,
            "fv1-x",
            str(home / f"r{v}.tar"),
            {"name": "student", "metrics": {"macro_roc_auc": 0.7 + int(v) / 100}},
        )
    common = Counter(d.species_code for d, _ in dets).most_common(1)[0][0]
    return {"tour": str(tours[0][0].uuid), "clip": clip_ids[0][0], "species": common}


def pages(h: dict[str, str]) -> list[tuple[str, str]]:
    return [
        ("overview", "/console/"),
        ("review queue", "/console/review"),
        ("review queue, species filter", f"/console/review?species={h.get('species', 'grekis')}"),
        ("review one clip", f"/console/review/{h.get('clip', uuid.UUID(int=1))}"),
        ("tours (list)", "/console/tours"),
        (f"tour ({DETECTIONS // TOURS} detections)", f"/console/tours/{h.get('tour', uuid.UUID(int=1))}"),
        ("species index", "/console/species"),
        ("species page (most heard)", f"/console/species/{h.get('species', 'grekis')}"),
        ("models", "/console/models"),
        ("exports (form)", "/console/exports"),
    ]


def measure(client, path: str, repeat: int) -> tuple[float, float, int, float]:  # type: ignore[no-untyped-def]
    """Wall-clock p50 and p95 (ms), the last status, and the median CPU time this process spent per
    request (ms, all its threads: less sensitive to other load on the machine than wall time; a
    PostgreSQL server's own CPU is not in it)."""
    times, cpu = [], []
    status = 0
    for i in range(repeat + 2):
        t, c = time.perf_counter(), time.process_time()
        r = client.get(path)
        dt, dc = time.perf_counter() - t, time.process_time() - c
        status = r.status_code
        if i >= 2:
            times.append(dt * 1000)
            cpu.append(dc * 1000)
    times.sort()
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    return statistics.median(times), p95, status, statistics.median(cpu)


def console_client(store, home: Path, cache_s: float = 0.0):  # type: ignore[no-untyped-def]
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    from cloud.console import Console, ConsoleDeps, ConsoleSettings

    console = Console(ConsoleDeps.from_taxonomy(store, home), ConsoleSettings(overview_cache_s=cache_s))
    app = Starlette(routes=[Mount("/console", console.app)])
    client = TestClient(app, follow_redirects=False)
    token = store.add_user(f"timer-{uuid.uuid4().hex[:6]}", "reviewer")
    page = client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    assert client.post("/console/login", data={"csrf": csrf, "token": token}).status_code == 303
    return client


def open_backend(name: str, work: Path):  # type: ignore[no-untyped-def]
    from cloud.store import SQLiteCloudStore

    if name == "sqlite":
        return SQLiteCloudStore(work / f"{name}-{uuid.uuid4().hex[:6]}.db"), None
    from cloud.store.local_pg import LocalPostgres
    from cloud.store.postgres import PostgresCloudStore

    pg = LocalPostgres(work / "pg", durable=False)
    url = pg.create_database(f"bench_{uuid.uuid4().hex[:8]}")
    return PostgresCloudStore(url), pg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="sqlite", help="comma-separated: sqlite, postgresql")
    ap.add_argument("--repeat", type=int, default=30, help="requests per page (after 2 warm-ups)")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)  # the empty store's 404s are expected
    os.environ.setdefault("SILENCIO_HOME", tempfile.mkdtemp(prefix="silencio-bench-"))
    work = Path(tempfile.mkdtemp(prefix="console-bench-"))
    rows = []
    pgs = []
    for backend in args.backends.split(","):
        empty, pg = open_backend(backend, work)
        pgs.append(pg)
        client = console_client(empty, work)
        base = {name: measure(client, path, args.repeat) for name, path in pages({})}  # entity pages: 404
        big, pg2 = open_backend(backend, work)
        pgs.append(pg2)
        t = time.perf_counter()
        handles = fill(big, work)
        fill_s = time.perf_counter() - t
        counts = big.counts()
        print(
            f"{backend}: filled {counts['detections']} detections, {counts['clips']} clips, "
            f"{counts['confirmations']} confirmations, {len(big.review_verdicts())} verdicts "
            f"in {fill_s:.0f} s",
            flush=True,
        )
        client = console_client(big, work)  # the overview's cache off: every request computes it
        for name, path in pages(handles):
            p50, p95, status, cpu_ms = measure(client, path, args.repeat)
            b50, b95, b_status, _ = base[name]
            assert status == 200, (name, status)
            base_cells = [f"{b50:.1f}", f"{b95:.1f}"] if b_status == 200 else ["n/a", "n/a"]
            ok = "yes" if p95 < 300 else "NO"
            rows.append([backend, name, f"{p50:.1f}", f"{p95:.1f}", f"{cpu_ms:.1f}", *base_cells, ok])
        cached = console_client(big, work, cache_s=10.0)  # the default: aggregates reused for 10 s
        for name, path in pages(handles)[:1] + [p for p in pages(handles) if p[0] == "species index"]:
            p50, p95, _, cpu_ms = measure(cached, path, args.repeat)
            ok = "yes" if p95 < 300 else "NO"
            rows.append(
                [
                    backend,
                    f"{name} (10 s cache, the default)",
                    f"{p50:.1f}",
                    f"{p95:.1f}",
                    f"{cpu_ms:.1f}",
                    "",
                    "",
                    ok,
                ]
            )
        times, cpu = [], []
        for _ in range(max(5, args.repeat // 3)):
            t, c = time.perf_counter(), time.process_time()
            big.summary()
            times.append((time.perf_counter() - t) * 1000)
            cpu.append((time.process_time() - c) * 1000)
        times.sort()
        p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
        rows.append(
            [
                backend,
                "baseline: Store.summary() (= /v1/reports/summary)",
                f"{statistics.median(times):.1f}",
                f"{p95:.1f}",
                f"{statistics.median(cpu):.1f}",
                "",
                "",
                "",
            ]
        )
        big.close()
        empty.close()
    for pg in pgs:
        if pg is not None:
            pg.stop()
    load = os.getloadavg()
    print(
        f"\nconsole page server times, ms (in-process ASGI, {args.repeat} requests per page; "
        f"load average {load[0]:.1f} on {os.cpu_count()} CPUs)"
    )
    header = ["store", "page", "p50", "p95", "CPU p50", "empty store p50", "empty store p95", "p95 < 300 ms"]
    print(table(header, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
