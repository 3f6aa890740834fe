"""Load test of the cloud service: concurrent clients posting real 5 s clips to ``/identify``.

    .venv/bin/python benchmarks/cloud_load.py [--url http://127.0.0.1:3000] [--seconds 20]
    .venv/bin/python benchmarks/cloud_load.py --start [--model PACKAGE]   # starts `silencio cloud serve`
    .venv/bin/python benchmarks/cloud_load.py --start --model PACKAGE --baseline-ref 4bf72a2

Clips: 5 s cut from every real recording under ``../shared/data`` (WAV bytes, 32 kHz mono). For
1, 8 and 32 concurrent clients (``--clients``), each posting clips back to back for ``--seconds``:
p50 / p95 / p99 latency, throughput (clips/s), errors, and the windows per ensemble call the
Scorer's adaptive batcher formed (from the service's Prometheus ``/metrics``: BentoML's
``adaptive_batch_size`` histogram — one 5 s clip is one window).

``--baseline-ref REF`` measures, in the same run and on the same package, clips and machine, the
service as the commit ``REF`` of this repository had it (extracted with ``git archive`` into a
temporary folder and served from there), then this working tree's, and prints both with the
ratios. ``--start`` serves BirdNET only unless ``--model`` is given (the taxonomy of the mini
dataset names the species).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from benchmarks._table import table  # noqa: E402

REPO = _HERE.parent
DATA = REPO.parent / "shared" / "data"


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


def batch_stats(url: str) -> tuple[float, float]:
    """(windows, calls) the Scorer has scored so far, from ``/metrics``: its own
    ``silencio_scorer_batch_windows`` histogram (observed inside the scoring call), else — on code
    that predates it — BentoML's ``adaptive_batch_size`` (requests per dispatched batch; it also
    counts empty and calibration batches, so it is only a fallback)."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    ours = {"sum": 0.0, "count": 0.0}
    bento = {"sum": 0.0, "count": 0.0}
    found = False
    for line in text.splitlines():
        m = re.match(r"^silencio_scorer_batch_windows_(sum|count)(?:\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m:
            found = True
            ours[m.group(1)] += float(m.group(2))
            continue
        m = re.match(r"^\w*adaptive_batch_size_(sum|count)\{([^}]*)\} ([0-9.e+-]+)$", line)
        if m and "silencio_scorer" in m.group(2):
            bento[m.group(1)] += float(m.group(3))
    total = ours if found else bento
    return total["sum"], total["count"]


async def run_clients(url: str, n: int, seconds: float, payloads: list[bytes]) -> dict[str, Any]:
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
    return {"clients": n, "lat": lat, "errors": errors, "wall": time.perf_counter() - t0}


def summary(parts: list[dict[str, Any]]) -> dict[str, float]:
    """One level's figures over its rounds: latencies pooled, throughput = requests / wall time."""
    lat = [x for p in parts for x in p["lat"]]
    a = np.array(lat) * 1e3 if lat else np.array([np.nan])
    calls = sum(p["calls"] for p in parts)
    return {
        "clients": parts[0]["clients"],
        "requests": len(lat),
        "errors": sum(p["errors"] for p in parts),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "throughput": len(lat) / sum(p["wall"] for p in parts),
        "batch": sum(p["windows"] for p in parts) / calls if calls else float("nan"),
        "load": float(np.mean([p["load"] for p in parts])),
        "cpu_ms": 1e3 * sum(p["cpu"] for p in parts) / max(1, len(lat)),
    }


def source_of(ref: str, dest: Path) -> Path:
    """The repository's tree at ``ref`` (``git archive``), extracted into ``dest``."""
    blob = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    return dest


@contextlib.contextmanager
def serve(port: int, model: str | None, src: Path, home: Path) -> Iterator[tuple[str, int]]:
    """``silencio cloud serve`` from the source tree ``src`` (first on PYTHONPATH); stopped, with
    every process it started, on exit."""
    import httpx

    env = {**os.environ, "PYTHONPATH": str(src), "SILENCIO_HOME": str(home)}
    cmd = [sys.executable, "-m", "silencio", "cloud", "serve", "--port", str(port)]
    cmd += (
        ["--model", str(Path(model).resolve())]
        if model
        else ["--taxonomy", str(DATA / "birdclef2025_mini" / "taxonomy.csv")]
    )
    proc = subprocess.Popen(  # cwd: `python -m` puts the working directory before PYTHONPATH
        cmd, cwd=src, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise SystemExit(f"server from {src} exited with {proc.returncode}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            raise SystemExit("server did not become ready")
        yield url, proc.pid
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """SIGTERM the server's process group (it and its workers), SIGKILL what outlives 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.time() + 30
    while time.time() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of the server's process tree so far (nan when not ours)."""
    if pid is None:
        return float("nan")
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(
    url: str, levels: list[int], seconds: float, payloads: list[bytes], pid: int | None = None
) -> list[dict[str, Any]]:
    # warm-up: the batcher's calibration, and the first calls at every batch size the levels will
    # form (new shapes cost the runtimes one-time allocations)
    asyncio.run(run_clients(url, 2, 3.0, payloads))
    asyncio.run(run_clients(url, max(levels), 8.0, payloads))
    rows = []
    for n in levels:
        s0, c0 = batch_stats(url)
        u0 = cpu_seconds(pid)
        r = asyncio.run(run_clients(url, n, seconds, payloads))
        s1, c1 = batch_stats(url)
        r.update(windows=s1 - s0, calls=c1 - c0, load=os.getloadavg()[0], cpu=cpu_seconds(pid) - u0)
        rows.append(r)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:3000")
    ap.add_argument("--seconds", type=float, default=20.0, help="duration of each concurrency level")
    ap.add_argument("--clients", default="1,8,32", help="concurrency levels, comma-separated")
    ap.add_argument("--start", action="store_true", help="start `silencio cloud serve` for the run")
    ap.add_argument("--model", help="with --start: the model package to serve")
    ap.add_argument("--port", type=int, default=3917)
    ap.add_argument(
        "--baseline-ref", help="with --start: also serve this git commit's code, first, as the baseline"
    )
    ap.add_argument(
        "--rounds", type=int, default=1, help="with --baseline-ref: alternate baseline / this tree this often"
    )
    args = ap.parse_args()
    levels = [int(x) for x in args.clients.split(",")]
    payloads = clips()
    if args.baseline_ref and not args.start:
        raise SystemExit("--baseline-ref needs --start")
    parts: dict[str, list[list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="silencio_load_") as tmp:
        if args.start:
            sources = [("this tree", REPO)]
            if args.baseline_ref:
                old = source_of(args.baseline_ref, Path(tmp) / "baseline")
                sources.insert(0, (f"baseline {args.baseline_ref}", old))
            for r in range(args.rounds):  # alternating, so that the machine's load falls on both alike
                for k, (name, src) in enumerate(sources):
                    with serve(args.port, args.model, src, Path(tmp) / f"home{k}-{r}") as (url, pid):
                        parts.setdefault(name, []).append(measure(url, levels, args.seconds, payloads, pid))
        else:
            parts[args.url] = [measure(args.url, levels, args.seconds, payloads)]
    runs = [
        (name, [summary([rnd[i] for rnd in rs]) for i in range(len(levels))]) for name, rs in parts.items()
    ]
    model = args.model or ("BirdNET only" if args.start else "the server's")
    print(
        f"model {model}; {len(payloads)} real 5 s clips (WAV, 32 kHz); {args.seconds:.0f} s per level and "
        f"round, {args.rounds} round(s); {os.cpu_count()} CPUs\n"
    )
    base = runs[0][1]
    rows = []
    for name, rs in runs:
        for r, b in zip(rs, base):
            rows.append(
                [
                    name,
                    r["clients"],
                    r["requests"],
                    r["errors"],
                    r["p50"],
                    r["p95"],
                    r["p99"],
                    r["throughput"],
                    r["batch"],
                    r["throughput"] / b["throughput"],
                    r["p95"] / b["p95"],
                    r["cpu_ms"],
                    b["cpu_ms"] / r["cpu_ms"],
                    r["load"],
                ]
            )
    head = ["server", "clients", "requests", "errors", "p50 ms", "p95 ms", "p99 ms", "clips/s"]
    head += ["windows/call", f"clips/s × {runs[0][0]}", f"p95 × {runs[0][0]}", "server CPU ms/clip"]
    head += [f"clips per CPU-s × {runs[0][0]}", "load avg"]
    print(table(head, rows))
    print(
        "\nwindows/call: the mean windows per ensemble call the Scorer's batcher formed; server CPU ms/clip: "
        "user + system CPU time of the server's processes per answered clip (independent of what else "
        "the machine runs); load avg: the machine's 1-minute load average during the level (other "
        "processes included)."
    )


if __name__ == "__main__":
    main()
