"""The traffic and the measurements of the cloud's load and soak runs, shared by
``benchmarks/cloud_soak.py`` and ``tests/reliability/test_load.py``.

* :func:`run_mix`: ``clients`` concurrent device clients on loopback, each looping over a mix of
  ``POST /v1/identify`` (a real 5 s clip), ``POST /v1/sync`` (a tour and new detections) and
  ``POST /v1/clips`` (a real clip linked to one of its synced detections) until a deadline or a
  request budget — whichever comes first, so a run always stops by itself. Every answer that is
  not a 200 (or a request that fails) is an error, listed by kind.
* :class:`ProcessSampler`: RSS, open file descriptors and threads of a process we started and
  of its descendants (read from ``/proc/<pid>/`` of those pids only), sampled over time.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOUNDSCAPE = DATA / "birdclef2025_mini" / "train_soundscapes" / "H02_20230420_074000.ogg"
TAXONOMY = DATA / "birdclef2025_mini" / "taxonomy.csv"
#: the operations of the mix and their weights
MIX = (("identify", 0.4), ("sync", 0.4), ("clip", 0.2))
SPECIES = ("rutjac1", "grekis", "bobfly1", "cattyr", "trokin")


def real_clips(n: int = 12, seconds: float = 5.0) -> tuple[list[bytes], list[bytes]]:
    """``n`` different ``seconds``-long cuts of the real El Silencio soundscape: (WAV bytes for
    identify, OGG bytes for clip uploads)."""
    import soundfile as sf

    x, sr = sf.read(SOUNDSCAPE, dtype="float32")
    length = int(seconds * sr)
    wavs, oggs = [], []
    for k in range(n):
        start = int(k * 3.7 * sr) % (len(x) - length)
        cut = x[start : start + length]
        for fmt, sub, out in (("WAV", "PCM_16", wavs), ("OGG", "VORBIS", oggs)):
            buf = io.BytesIO()
            sf.write(buf, cut, sr, format=fmt, subtype=sub)
            out.append(buf.getvalue())
    return wavs, oggs


@dataclass
class MixResult:
    clients: int
    seconds: float
    latencies: dict[str, list[float]] = field(default_factory=dict)  # op → seconds
    errors: Counter[str] = field(default_factory=Counter)  # "op status/exception" → count
    wall: float = 0.0

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values()) + sum(self.errors.values())

    @property
    def n_errors(self) -> int:
        return sum(self.errors.values())

    def row(self, op: str | None = None) -> dict[str, Any]:
        lat = [x for v in self.latencies.values() for x in v] if op is None else self.latencies.get(op, [])
        a = np.array(lat) * 1e3 if lat else np.array([np.nan])
        errors = sum(n for k, n in self.errors.items() if op is None or k.startswith(op + " "))
        return {
            "op": op or "all",
            "requests": len(lat) + errors,
            "errors": errors,
            "p50": float(np.percentile(a, 50)),
            "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)),
            "per_s": len(lat) / self.wall if self.wall else 0.0,
        }


async def _client(
    k: int,
    url: str,
    token: str,
    deadline: float,
    budget: list[int],
    wavs: Sequence[bytes],
    oggs: Sequence[bytes],
    out: MixResult,
    seed: int,
) -> None:
    import httpx

    rng = random.Random(seed * 1000 + k)
    ops, weights = zip(*MIX)
    tour = {
        "uuid": str(uuid.uuid4()),
        "guide": f"load-{k}",
        "location": "El Silencio",
        "started_at": datetime.now(UTC).isoformat(),
    }
    synced: list[dict[str, Any]] = []  # detections the cloud acknowledged (clips link to them)
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(120, connect=10)) as http:
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            op = rng.choices(ops, weights)[0]
            if op == "clip" and not synced:
                op = "sync"
            t = time.perf_counter()
            try:
                if op == "identify":
                    r = await http.post("/v1/identify", content=rng.choice(wavs))
                elif op == "sync":
                    t0 = datetime.now(UTC)
                    dets = [
                        {
                            "uuid": str(uuid.uuid4()),
                            "tour_uuid": tour["uuid"],
                            "species_code": rng.choice(SPECIES),
                            "start_time": (t0 + timedelta(seconds=i)).isoformat(),
                            "end_time": (t0 + timedelta(seconds=i + 3)).isoformat(),
                            "confidence": round(rng.uniform(0.5, 1.0), 4),
                            "band": "medium",
                            "model_version": "load 1",
                        }
                        for i in range(20)
                    ]
                    body = {"wire_version": 2, "tours": [tour], "detections": dets}
                    r = await http.post("/v1/sync", json=body, headers=headers)
                    if r.status_code == 200 and not r.json()["rejected"]:
                        synced.extend(dets[:2])
                else:
                    audio = rng.choice(oggs)
                    det = synced.pop(rng.randrange(len(synced)))
                    meta = {
                        "wire_version": 2,
                        "uuid": str(uuid.uuid4()),
                        "tour_uuid": tour["uuid"],
                        "detection_uuid": det["uuid"],
                        "sha256": hashlib.sha256(audio).hexdigest(),
                        "bytes": len(audio),
                        "reason": "uncertain",
                        "recorded_at": det["start_time"],
                        "source": "microphone",
                    }
                    r = await http.post(
                        "/v1/clips",
                        data={"meta": json.dumps(meta)},
                        files={"audio": ("c.ogg", audio, "audio/ogg")},
                        headers=headers,
                    )
                status = r.status_code
            except httpx.HTTPError as exc:
                out.errors[f"{op} {type(exc).__name__}"] += 1
                continue
            if status == 200:
                out.latencies.setdefault(op, []).append(time.perf_counter() - t)
            else:
                out.errors[f"{op} {status}"] += 1


def run_mix(
    url: str,
    tokens: Sequence[str],
    clients: int,
    seconds: float,
    *,
    max_requests: int = 1_000_000,
    clips: tuple[list[bytes], list[bytes]] | None = None,
    seed: int = 0,
) -> MixResult:
    """``clients`` clients (client ``k`` uses ``tokens[k % len(tokens)]``) for ``seconds`` or
    ``max_requests`` requests in all."""
    wavs, oggs = clips or real_clips()
    out = MixResult(clients, seconds)
    deadline = time.monotonic() + seconds
    budget = [max_requests]

    async def main() -> None:
        await asyncio.gather(
            *(
                _client(k, url, tokens[k % len(tokens)], deadline, budget, wavs, oggs, out, seed)
                for k in range(clients)
            )
        )

    t = time.perf_counter()
    asyncio.run(main())
    out.wall = time.perf_counter() - t
    return out


# ---------------------------------------------------------------------------------- /proc
def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (through ``/proc/<pid>/task/<tid>/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:  # it ended meanwhile
            continue
    return out


@dataclass(frozen=True)
class ProcSample:
    t: float
    processes: int
    rss_mb: float
    fds: int
    threads: int


def sample(pid: int, t0: float = 0.0) -> ProcSample:
    """RSS, open fds and threads summed over ``pid`` (a process we started) and its descendants."""
    procs = rss_kb = fds = threads = 0
    for p in _descendants(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
            n_fds = len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        procs += 1
        rss_kb += int(fields.get("VmRSS", "0 kB").split()[0])
        threads += int(fields.get("Threads", "0").strip())
        fds += n_fds
    return ProcSample(round(time.monotonic() - t0, 1), procs, rss_kb / 1024, fds, threads)


class ProcessSampler:
    """Samples :func:`sample` every ``every`` seconds in a thread while in its ``with`` block."""

    def __init__(self, pid: int, every: float = 5.0) -> None:
        self.pid, self.every = pid, every
        self.samples: list[ProcSample] = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(sample(self.pid, self._t0))
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
