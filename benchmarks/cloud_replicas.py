"""Replicas over one PostgreSQL: throughput and latency of a sync-heavy device mix against 1 (the
baseline) and 2 ``silencio cloud serve`` replicas, measured in the same run.

    .venv/bin/python benchmarks/cloud_replicas.py [--seconds 20] [--clients 32] [--devices 16]

A real PostgreSQL 16 (the ``pgserver`` wheel, fsync on) in a temporary directory; per configuration
a fresh database and N replicas (BirdNET-only model, shared clip directory), clients spread
round-robin over the replicas as a load balancer would. Each client is a device: 85 % ``POST
/v1/sync`` (its tour, 20 new detections and 5 it sent before — a retry), 10 % ``GET
/v1/confirmations``, 5 % ``POST /v1/feedback``. Printed: requests/s, detections stored/s, p50/p95/p99
latency, errors (any non-200), and the ratios against one replica. Every replica, the database and
the clients share this machine's cores: on a 2-core machine a second replica adds processes, not
CPU.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

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

    def batch(self) -> dict:
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
        self.sent.extend(new)
        return {
            "wire_version": 2,
            "tours": [self.tour],
            "detections": new + resent,
            "device": {"app_version": "bench", "pending_detections": self.rng.randint(0, 100)},
        }


async def run_load(urls: list[str], devices: list[Device], clients: int, seconds: float) -> dict[str, float]:
    import httpx

    lat: list[float] = []
    stored = 0
    errors = 0
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
                    r = await http.post(f"{base}/v1/sync", json=dev.batch(), headers=headers)
                    acc = r.json()["accepted"] if r.status_code == 200 else []
                    new = sum(1 for u in acc if u != dev.tour["uuid"])
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
            except httpx.HTTPError:
                ok, new = False, 0
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
    }


def measure(pg, work: Path, n_replicas: int, args: argparse.Namespace) -> dict[str, float]:  # type: ignore[no-untyped-def]
    from cloud.replicas import ServeProcess, free_port
    from cloud.store import open_url

    url = pg.create_database(f"bench_{n_replicas}")
    store = open_url(url)
    rng = random.Random(n_replicas)
    devices = [
        Device(f"dev-{i}", store.add_device(f"dev-{i}"), random.Random(rng.random()))
        for i in range(args.devices)
    ]
    env = {
        "SILENCIO_CLOUD_DATABASE_URL": url,
        "SILENCIO_CLOUD_CLIP_DIR": str(work / f"clips{n_replicas}"),
        "SILENCIO_CLOUD_TAXONOMY": str(TAXONOMY),
    }
    procs = [
        ServeProcess(
            free_port(),
            {
                **env,
                "SILENCIO_HOME": str(work / f"home{n_replicas}-{k}"),
                "BENTOML_HOME": str(work / f"bentoml{k}"),
            },
            work / f"replica{n_replicas}-{k}.log",
        )
        for k in range(n_replicas)
    ]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready(300)
        urls = [p.url for p in procs]
        asyncio.run(run_load(urls, devices, args.clients, 3.0))  # warm-up: pools, imports, caches
        row = asyncio.run(run_load(urls, devices, args.clients, args.seconds))
        counts = store.counts()
        row["detections_in_db"] = counts["detections"]
        return row
    finally:
        for p in procs:
            p.stop()
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per configuration")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients (devices syncing)")
    ap.add_argument("--devices", type=int, default=16, help="distinct devices the clients act as")
    args = ap.parse_args()
    from cloud.store.local_pg import LocalPostgres

    with tempfile.TemporaryDirectory(prefix="silencio-replicas-") as tmp:
        work = Path(tmp)
        with LocalPostgres(work / "pg") as pg:
            rows = {n: measure(pg, work, n, args) for n in (1, 2)}
    base = rows[1]
    print(
        f"{args.clients} clients as {args.devices} devices, {args.seconds:.0f} s per configuration, "
        f"{os.cpu_count()} CPU cores shared by PostgreSQL, the replicas and the clients\n"
    )
    print(
        table(
            [
                "replicas",
                "requests",
                "errors",
                "req/s",
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


if __name__ == "__main__":
    main()
