"""Where the full ensemble's time goes, per 5 s window, on real audio: each member alone and the
whole package, one member after another (``sequential``, the path before batching) against the
concurrent scorer, at 1 window and at a batch.

    .venv/bin/python benchmarks/cloud_profile.py --model PACKAGE [--threads 2] [--batch 32]

Rows: the shared log-mel; every feature member (ONNX / TFLite) on the log-mel; BirdNET's part —
resampling to 48 kHz and cutting the three 3 s chunks, then the LiteRT invoke — and its head;
then ``ModelPackage.predict`` both ways, and the cloud Scorer's call (concurrent,
``members=False``: members of weight 0 are not run). Each figure is the best of ``--repeat`` runs,
in ms per window, with ``--threads`` threads for the runtime (intra-op) or the pool (concurrent).
numpy's BLAS runs on ``--blas-threads`` threads (1, as in the service's workers; the log-mel's
filterbank product is the BLAS call).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from benchmarks._table import table  # noqa: E402

DATA = _HERE.parents[1] / "shared" / "data"


def real_windows(n: int) -> np.ndarray:
    """``n`` 5 s windows from the real soundscapes and clips of the shared data."""
    from shared_features import frame_windows, load_audio

    out: list[np.ndarray] = []
    for p in sorted(DATA.rglob("*.ogg")):
        try:
            w, _ = frame_windows(load_audio(p))
        except Exception:  # noqa: BLE001 - a file the decoder refuses is simply skipped
            continue
        out.extend(w)
        if len(out) >= n:
            break
    if not out:
        raise SystemExit(f"no real recordings under {DATA}")
    while len(out) < n:
        out.extend(out[: n - len(out)])
    return np.stack(out[:n])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="ensemble package directory")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32, help="windows in the batched rows")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--blas-threads", type=int, default=1, help="numpy's BLAS threads (the service: 1)")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=args.blas_threads, user_api="blas")

    from shared_features import log_mel
    from shared_features.birdnet import BirdNET
    from shared_features.config import get_preset
    from shared_features.package import load_package

    wins = real_windows(args.batch)
    one = wins[:1]
    seq = load_package(args.model, threads=args.threads, concurrent=False)
    conc = load_package(args.model, threads=args.threads, concurrent=True)
    rows: list[list[object]] = []

    def timed(fn, n: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
        """(best wall ms, least CPU ms of this process, all threads) per window over the repeats."""
        fn()
        wall, cpu = [], []
        for _ in range(args.repeat):
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        return 1e3 * min(wall) / n, 1e3 * min(cpu) / n

    def row(name: str, fn_one, fn_batch, n_batch: int = args.batch) -> None:  # type: ignore[no-untyped-def]
        rows.append([name, *timed(fn_one, 1), *timed(fn_batch, n_batch)])

    feats = {}
    for m in seq.members:
        if m.runtime in ("onnx", "tflite") and m.feature_preset not in feats:
            cfg = get_preset(m.feature_preset)
            row(
                f"log-mel ({m.feature_preset})", lambda c=cfg: log_mel(one, c), lambda c=cfg: log_mel(wins, c)
            )
            feats[m.feature_preset] = log_mel(wins, cfg)
    for m in seq.members:
        if m.runtime in ("onnx", "tflite"):
            f = feats[m.feature_preset]
            for pkg, th in ((seq, args.threads), (conc, 1)):
                run = pkg._runner(m)
                row(
                    f"{m.name} ({m.runtime}, {th} thread(s))",
                    lambda r=run, f=f: r(f[:1]),
                    lambda r=run, f=f: r(f),
                )
    if any(m.runtime in ("birdnet", "birdnet-head") for m in seq.members):
        cfg = seq.feature_cfg
        row(
            "BirdNET: resample to 48 kHz + 3 chunks",
            lambda: BirdNET.chunks_of(one[0], cfg),
            lambda: [BirdNET.chunks_of(w, cfg) for w in wins],
        )
        c1 = BirdNET.chunks_of(one[0], cfg)
        cb = np.concatenate([BirdNET.chunks_of(w, cfg) for w in wins[:8]])
        for pkg, th in ((seq, args.threads), (conc, 1)):
            bn = pkg._birdnet_model()
            row(
                f"BirdNET: LiteRT invoke, 3 chunks ({th} thread(s))",
                lambda bn=bn: bn.chunk_logits(c1),
                lambda bn=bn: bn.chunk_logits(cb),
                8,
            )
        for m in seq.members:
            if m.runtime == "birdnet-head":
                e = np.zeros((args.batch, 1024), np.float32)
                row(
                    "BirdNET head (numpy)",
                    lambda m=m, e=e: seq._head_predict(m, e[:1]),
                    lambda m=m, e=e: seq._head_predict(m, e),
                )
    row("ensemble, sequential (each member in turn)", lambda: seq.predict(one), lambda: seq.predict(wins))
    row(
        f"ensemble, concurrent ({args.threads}-worker pool)",
        lambda: conc.predict(one),
        lambda: conc.predict(wins),
    )
    skipped = [m.name for m in conc.members if m.weight <= 0]
    row(
        "ensemble, the Scorer's call (concurrent, members=False"
        + (f"; weight 0, not run: {', '.join(skipped)})" if skipped else ")"),
        lambda: conc.predict(one, members=False),
        lambda: conc.predict(wins, members=False),
    )
    conc.close()
    print(
        f"package {seq.describe()}; {os.cpu_count()} CPUs, BLAS threads {args.blas_threads}, "
        f"load average {os.getloadavg()[0]:.1f}\n"
    )
    b = args.batch
    print(
        table(
            [
                "stage",
                "wall ms (1 window)",
                "CPU ms (1 window)",
                f"wall ms/window (batch {b})",
                f"CPU ms/window (batch {b})",
            ],
            rows,
        )
    )
    print(
        "\nwall: best of the repeats; CPU: user + system time of this process (every thread, spinning "
        "included), least of the repeats — what the window costs the machine, whatever else runs on it. "
        "BirdNET's batch column is 8 windows (24 chunks)."
    )


if __name__ == "__main__":
    main()
