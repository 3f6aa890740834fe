"""Replicas over one PostgreSQL: throughput and latency of a sync-heavy device mix against 1 (the
baseline) and 2 ``silencio cloud serve`` replicas, measured in the same run.

    .venv/bin/python benchmarks/cloud_replicas.py [--seconds 10] [--rounds 3] [--clients 32]

A real PostgreSQL 16 (the ``pgserver`` wheel, fsync on) in a temporary directory and two replicas
(BirdNET-only model, shared clip directory) running throughout; rounds alternate between sending
every request to the first replica and spreading them round-robin over both, as a load balancer
would, so both configurations see the same database and the same machine load within seconds.
Each client is a device: 85 % ``POST /v1/sync`` (its tour, 20 new detections and 5 it sent
before — a retry), 10 % ``GET /v1/confirmations``, 5 % ``POST /v1/feedback``. Printed: requests/s,
detections stored/s, p50/p95/p99 latency (median of the rounds), errors (any non-200, listed),
and the ratios against one replica. The replicas, the database and the clients share this
machine's cores: on a 2-core machine a second replica adds a process, not CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from benchmarks._table import table  # noqa: E402

TAXONOMY = _HERE.parents[1] / "shared" / "data" / "birdclef2025_mini" / "taxonomy.csv"
SPECIES = ["rutjac1", "grekis", "bobfly1", "compau", "trokin"]


class Device:
    """One simulated field device: its token, its tour, the detections it has sent."""

    def __init__(self, name: str, token: str, rng: random.Random) -> None:
        self.name, self.token, self.rng = name, token, rng
        self.tour = {
            "uuid": str(uuid.uuid4()),
            "guide": name,
            "location": "El Silencio",
            "started_at": datetime.now(UTC).isoformat(),
        }
        self.sent: list[dict] = []
        self.t = datetime.now(UTC)

    def batch(self) -> tuple[dict, list[dict]]:
        """A sync body (20 new detections and 5 sent before) and its new detections, which count
        as sent once the cloud acknowledged them (two clients may act as one device)."""
        new = []
        for _ in range(20):
            self.t += timedelta(seconds=3)
            new.append(
                {
                    "uuid": str(uuid.uuid4()),
                    "tour_uuid": self.tour["uuid"],
                    "species_code": self.rng.choice(SPECIES),
                    "start_time": self.t.isoformat(),
                    "end_time": (self.t + timedelta(seconds=2)).isoformat(),
                    "confidence": round(self.rng.uniform(0.5, 0.99), 3),
                    "band": "medium",
                    "model_version": "student 1",
                }
            )
        resent = self.rng.sample(self.sent, min(5, len(self.sent)))
        body = {
            "wire_version": 2,
            "tours": [self.tour],
            "detections": new + resent,
            "device": {"app_version": "bench", "pending_detections": self.rng.randint(0, 100)},
        }
        return body, new


async def run_load(urls: list[str], devices: list[Device], clients: int, seconds: float) -> dict[str, Any]:
    import httpx

    lat: list[float] = []
    stored = 0
    errors = 0
    kinds: Counter[str] = Counter()
    stop = time.perf_counter() + seconds
    nxt = 0

    async def client(k: int, http: httpx.AsyncClient) -> None:
        nonlocal stored, errors, nxt
        dev = devices[k % len(devices)]
        headers = {"authorization": f"Bearer {dev.token}"}
        while time.perf_counter() < stop:
            base = urls[nxt % len(urls)]  # round-robin, as a load balancer
            nxt += 1
            roll = dev.rng.random()
            t = time.perf_counter()
            try:
                if roll < 0.85 or not dev.sent:
                    body, fresh = dev.batch()
                    r = await http.post(f"{base}/v1/sync", json=body, headers=headers)
                    acc = r.json()["accepted"] if r.status_code == 200 else []
                    new = sum(1 for u in acc if u != dev.tour["uuid"])
                    if r.status_code == 200:
                        dev.sent.extend(fresh)
                elif roll < 0.95:
                    r = await http.get(f"{base}/v1/confirmations", params={"since": 0}, headers=headers)
                    new = 0
                else:
                    det = dev.rng.choice(dev.sent)
                    fb = {
                        "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, det["uuid"])),
                        "detection_uuid": det["uuid"],
                        "kind": "confirmed",
                        "created_at": datetime.now(UTC).isoformat(),
                    }
                    r = await http.post(f"{base}/v1/feedback", json=fb, headers=headers)
                    new = 0
                ok = r.status_code == 200
                if not ok:
                    kinds[f"{r.request.method} {r.request.url.path} {r.status_code}: {r.text[:120]}"] += 1
            except httpx.HTTPError as exc:
                ok, new = False, 0
                kinds[f"{type(exc).__name__}: {exc}"] += 1
            if ok:
                lat.append(time.perf_counter() - t)
                stored += new
            else:
                errors += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(k, http) for k in range(clients)))
        wall = time.perf_counter() - t0
    a = np.array(lat) * 1e3 if lat else np.array([np.nan])
    return {
        "requests": len(lat),
        "errors": errors,
        "rps": len(lat) / wall,
        "stored": stored / wall,
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "error_kinds": dict(kinds),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of 1 and 2 replicas")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients (devices syncing)")
    ap.add_argument("--devices", type=int, default=16, help="distinct devices the clients act as")
    args = ap.parse_args()
    from cloud.replicas import ServeProcess, free_port
    from cloud.store import open_url
    from cloud.store.local_pg import LocalPostgres

    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    with (
        tempfile.TemporaryDirectory(prefix="silencio-replicas-") as tmp,
        LocalPostgres(Path(tmp) / "pg") as pg,
    ):
        work = Path(tmp)
        url = pg.create_database("bench")
        store = open_url(url)
        rng = random.Random(0)
        devices = [
            Device(f"dev-{i}", store.add_device(f"dev-{i}"), random.Random(rng.random()))
            for i in range(args.devices)
        ]
        env = {
            "SILENCIO_CLOUD_DATABASE_URL": url,
            "SILENCIO_CLOUD_CLIP_DIR": str(work / "clips"),
            "SILENCIO_CLOUD_TAXONOMY": str(TAXONOMY),
        }
        procs = [
            ServeProcess(
                free_port(),
                {**env, "SILENCIO_HOME": str(work / f"home{k}"), "BENTOML_HOME": str(work / f"bentoml{k}")},
                work / f"replica{k}.log",
            )
            for k in range(2)
        ]
        try:
            for p in procs:
                p.start()
            for p in procs:
                p.wait_ready(300)
            urls = [p.url for p in procs]
            asyncio.run(run_load(urls, devices, args.clients, 3.0))  # warm-up: pools, imports, caches
            # both replicas run throughout; "1 replica" sends every request to the first, so the two
            # configurations alternate within seconds of each other on the same database
            for _ in range(args.rounds):
                for n in (1, 2):
                    runs[n].append(asyncio.run(run_load(urls[:n], devices, args.clients, args.seconds)))
            counts = store.counts()
        finally:
            for p in procs:
                p.stop()
            store.close()
    rows = {n: _pool(rs) for n, rs in runs.items()}
    base = rows[1]
    for n, r in rows.items():
        for kind, count in r["error_kinds"].items():
            print(f"{n} replica(s): {count} × {kind}")
    print(
        f"{args.clients} clients as {args.devices} devices; {args.rounds} alternating rounds of "
        f"{args.seconds:.0f} s per configuration (median of the rounds; spread min–max); "
        f"{counts['detections']} detections stored in all; {os.cpu_count()} CPU cores shared by "
        f"PostgreSQL, the replicas and the clients\n"
    )
    print(
        table(
            [
                "replicas",
                "requests",
                "errors",
                "req/s",
                "req/s min–max",
                "detections/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "req/s × 1",
                "p95 × 1",
            ],
            [
                [
                    n,
                    r["requests"],
                    r["errors"],
                    r["rps"],
                    r["spread"],
                    r["stored"],
                    r["p50"],
                    r["p95"],
                    r["p99"],
                    r["rps"] / base["rps"],
                    r["p95"] / base["p95"],
                ]
                for n, r in rows.items()
            ],
        )
    )


def _pool(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one configuration: summed counts, median rates and latency percentiles."""
    kinds: Counter[str] = Counter()
    for r in rounds:
        kinds.update(r["error_kinds"])
    rps = [r["rps"] for r in rounds]
    med = lambda key: float(np.median([r[key] for r in rounds]))  # noqa: E731
    return {
        "requests": sum(r["requests"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "rps": med("rps"),
        "spread": f"{min(rps):.1f}–{max(rps):.1f}",
        "stored": med("stored"),
        "p50": med("p50"),
        "p95": med("p95"),
        "p99": med("p99"),
        "error_kinds": dict(kinds),
    }


if __name__ == "__main__":
    main()
