"""Load and soak of the cloud service on loopback: concurrent device clients mixing identify, sync and
clip uploads (``benchmarks/loadmix.py``) against a real ``silencio cloud serve`` (BirdNET alone,
the default model) that this script starts and stops.

    .venv/bin/python benchmarks/cloud_soak.py [--clients 32] [--load-seconds 60] [--soak-seconds 600]

1. **Load**: a 1-client baseline (measured in the same run), then ``--clients`` clients for
   ``--load-seconds``: requests, errors, p50 / p95 / p99 latency and throughput, per operation.
2. **Soak**: ``--clients`` clients for ``--soak-seconds`` while the server's processes (the one
   this script started and its workers, from ``/proc/<pid>/``) are sampled every 30 s: RSS,
   open file descriptors, threads. Reports RSS growth from the first sample after warm-up to the
   last, fd and thread counts at rest before and after, errors, and "database is locked" lines
   in the server's log.

Every request loop stops by itself (deadline and request budget). Exit status 1 when any request
failed, RSS grew by 10 % or more, or fds / threads grew by more than ``FD_SLACK``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from benchmarks._table import table  # noqa: E402
from benchmarks.loadmix import MixResult, ProcessSampler, real_clips, run_mix, sample  # noqa: E402

REPO = _HERE.parent
#: fds / threads that may come and go between two samples (as in tests/reliability/test_load.py)
FD_SLACK = 4


def _rows(label: str, r: MixResult) -> list[list[object]]:
    return [
        [label, x["op"], r.clients, x["requests"], x["errors"], x["p50"], x["p95"], x["p99"], x["per_s"]]
        for x in (r.row(), *(r.row(op) for op in ("identify", "sync", "clip")))
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--load-seconds", type=float, default=60.0)
    ap.add_argument("--soak-seconds", type=float, default=600.0)
    ap.add_argument("--sample-every", type=float, default=30.0)
    args = ap.parse_args()

    from cloud.replicas import ServeProcess, free_port
    from tests.reliability.conftest import register, serve_env

    clips = real_clips()
    with tempfile.TemporaryDirectory(prefix="silencio-soak-") as tmp:
        home = Path(tmp)
        devices, _ = register(home, [f"soak-{k}" for k in range(4)])
        tokens = list(devices.values())
        with ServeProcess(free_port(), serve_env(home), home / "serve.log", cwd=REPO) as server:
            server.wait_ready(300)
            assert server.proc is not None
            pid = server.proc.pid
            warm = run_mix(server.url, tokens, 4, 10.0, clips=clips, seed=1)
            base = run_mix(server.url, tokens, 1, min(30.0, args.load_seconds), clips=clips, seed=2)
            load = run_mix(
                server.url, tokens, args.clients, args.load_seconds, max_requests=10**6, clips=clips, seed=3
            )
            time.sleep(3)
            rest_before = sample(pid)
            with ProcessSampler(pid, every=args.sample_every) as sampler:
                soak = run_mix(
                    server.url,
                    tokens,
                    args.clients,
                    args.soak_seconds,
                    max_requests=10**7,
                    clips=clips,
                    seed=4,
                )
            time.sleep(3)
            rest_after = sample(pid)
            log = server.log_tail(10**9)
    print(
        f"silencio cloud serve (BirdNET alone) on loopback; {len(clips[0])} real 5 s clips; mix "
        "identify 40 % / sync (20 detections) 40 % / clip upload 20 %; "
        f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n"
    )
    print(
        table(
            ["run", "op", "clients", "requests", "errors", "p50 ms", "p95 ms", "p99 ms", "req/s"],
            [*_rows("baseline", base), *_rows(f"load {args.load_seconds:.0f} s", load)],
        )
    )
    s = sampler.samples
    first = s[1] if len(s) > 1 else s[0]  # the first sample under load
    last = s[-1]
    growth = (last.rss_mb - first.rss_mb) / first.rss_mb * 100
    print(f"\nsoak: {args.clients} clients for {args.soak_seconds:.0f} s\n")
    print(
        table(
            ["t s", "processes", "RSS MB", "fds", "threads"],
            [[x.t, x.processes, x.rss_mb, x.fds, x.threads] for x in s],
        )
    )
    locked = log.count("database is locked")
    print(
        f"\nsoak requests {soak.requests}, errors {soak.n_errors} {dict(soak.errors)}; "
        f"RSS {first.rss_mb:.0f} → {last.rss_mb:.0f} MB ({growth:+.1f} %); "
        f"at rest before/after: fds {rest_before.fds} → {rest_after.fds}, threads "
        f"{rest_before.threads} → {rest_after.threads}, processes {rest_before.processes} → "
        f"{rest_after.processes}; 'database is locked' in the log: {locked}; "
        f"warm-up errors {warm.n_errors}, load errors {load.n_errors}"
    )
    bad = (
        warm.n_errors
        or base.n_errors
        or load.n_errors
        or soak.n_errors
        or growth >= 10
        or last.fds > first.fds + FD_SLACK
        or rest_after.fds > rest_before.fds + FD_SLACK
        or rest_after.threads > rest_before.threads + FD_SLACK
        or locked
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
