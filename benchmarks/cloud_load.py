"""Load test of the cloud service: concurrent clients posting real 5 s clips to ``/identify``.

    .venv/bin/python benchmarks/cloud_load.py [--url http://127.0.0.1:3000] [--seconds 20]
    .venv/bin/python benchmarks/cloud_load.py --start [--model PACKAGE]   # starts `silencio cloud serve`

Clips: 5 s cut from every real recording under ``../shared/data`` (WAV bytes, 32 kHz mono). For
1 (the baseline, measured in the same run), 8 and 32 concurrent clients, each posting clips back to
back for ``--seconds``: p50 / p95 / p99 latency, throughput (clips/s), errors, and the ratios
against the single-client baseline. ``--start`` serves BirdNET only unless ``--model`` is given
(the taxonomy of the mini dataset names the species).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from benchmarks._table import table  # noqa: E402

DATA = _HERE.parents[1] / "shared" / "data"


def clips() -> list[bytes]:
    import soundfile as sf

    from shared_features import load_audio

    out = []
    for p in sorted(DATA.rglob("*")):
        if p.suffix.lower() not in (".ogg", ".wav", ".mp3", ".flac"):
            continue
        try:
            x = load_audio(p)
        except Exception:  # noqa: BLE001 - a file the decoder refuses is simply not a load clip
            continue
        if x.size < 5 * 32_000:
            continue
        mid = (x.size - 5 * 32_000) // 2
        buf = io.BytesIO()
        sf.write(buf, x[mid : mid + 5 * 32_000], 32_000, format="WAV", subtype="PCM_16")
        out.append(buf.getvalue())
    if not out:
        raise SystemExit(f"no real recordings under {DATA}")
    return out


async def run_clients(url: str, n: int, seconds: float, payloads: list[bytes]) -> dict[str, float]:
    import httpx

    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            i = k
            while time.perf_counter() < stop:
                body = payloads[i % len(payloads)]
                i += n
                t = time.perf_counter()
                try:
                    r = await c.post("/identify", files={"audio": ("clip.wav", body, "audio/wav")})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    lat.append(time.perf_counter() - t)
                else:
                    errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(n)))
    wall = time.perf_counter() - t0
    a = np.array(lat) * 1e3 if lat else np.array([np.nan])
    return {
        "clients": n,
        "requests": len(lat),
        "errors": errors,
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "throughput": len(lat) / wall,
    }


def start_server(port: int, model: str | None) -> subprocess.Popen:  # type: ignore[type-arg]
    import httpx

    cmd = [sys.executable, "-m", "silencio", "cloud", "serve", "--port", str(port)]
    cmd += ["--model", model] if model else ["--taxonomy", str(DATA / "birdclef2025_mini" / "taxonomy.csv")]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(180):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(1)
    os.killpg(proc.pid, signal.SIGTERM)
    raise SystemExit("server did not become ready")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:3000")
    ap.add_argument("--seconds", type=float, default=20.0, help="duration of each concurrency level")
    ap.add_argument("--start", action="store_true", help="start `silencio cloud serve` for the run")
    ap.add_argument("--model", help="with --start: the model package to serve")
    ap.add_argument("--port", type=int, default=3917)
    args = ap.parse_args()
    payloads = clips()
    proc = start_server(args.port, args.model) if args.start else None
    url = f"http://127.0.0.1:{args.port}" if args.start else args.url
    try:
        asyncio.run(run_clients(url, 2, 3.0, payloads))  # warm-up
        rows = [asyncio.run(run_clients(url, n, args.seconds, payloads)) for n in (1, 8, 32)]
    finally:
        if proc is not None:
            from silencio.demo import _stop

            _stop(proc)
    base = rows[0]
    print(f"server {url}; {len(payloads)} real 5 s clips (WAV, 32 kHz); {args.seconds:.0f} s per level\n")
    print(
        table(
            [
                "clients",
                "requests",
                "errors",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "clips/s",
                "p50 × 1-client",
                "clips/s × 1-client",
            ],
            [
                [
                    r["clients"],
                    r["requests"],
                    r["errors"],
                    r["p50"],
                    r["p95"],
                    r["p99"],
                    r["throughput"],
                    r["p50"] / base["p50"],
                    r["throughput"] / base["throughput"],
                ]
                for r in rows
            ],
        )
    )


if __name__ == "__main__":
    main()
