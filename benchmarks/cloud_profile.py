"""Where the full ensemble's time goes, per 5 s window, on real audio: each member alone and the
whole package, one member after another (``sequential``, the path before batching) against the
concurrent scorer, at 1 window and at a batch.

    .venv/bin/python benchmarks/cloud_profile.py --model PACKAGE [--threads 2] [--batch 32]

Rows: the shared log-mel; every feature member (ONNX / TFLite) on the log-mel; BirdNET's part —
resampling to 48 kHz and cutting the three 3 s chunks, then the LiteRT invoke — and its head;
then ``ModelPackage.predict`` both ways. Each figure is the best of ``--repeat`` runs, in ms per
window, with ``--threads`` threads for the runtime (intra-op) or the pool (concurrent).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from benchmarks._table import best_of, table  # noqa: E402

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
    args = ap.parse_args()

    from shared_features import log_mel
    from shared_features.birdnet import BirdNET
    from shared_features.config import get_preset
    from shared_features.package import load_package

    wins = real_windows(args.batch)
    one = wins[:1]
    seq = load_package(args.model, threads=args.threads, concurrent=False)
    conc = load_package(args.model, threads=args.threads, concurrent=True)
    rows: list[list[object]] = []

    def row(name: str, fn_one, fn_batch) -> None:  # type: ignore[no-untyped-def]
        t1 = best_of(fn_one, args.repeat) * 1e3
        tb = best_of(fn_batch, args.repeat) * 1e3 / args.batch
        rows.append([name, t1, tb])

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
            run, f = seq._runner(m), feats[m.feature_preset]
            row(
                f"{m.name} ({m.runtime}, {args.threads} threads)",
                lambda r=run, f=f: r(f[:1]),
                lambda r=run, f=f: r(f),
            )
    if any(m.runtime in ("birdnet", "birdnet-head") for m in seq.members):
        bn = seq._birdnet_model()
        cfg = seq.feature_cfg
        row(
            "BirdNET: resample + 3 chunks",
            lambda: BirdNET.chunks_of(one[0], cfg),
            lambda: [BirdNET.chunks_of(w, cfg) for w in wins],
        )
        c1 = BirdNET.chunks_of(one[0], cfg)
        cb = np.concatenate([BirdNET.chunks_of(w, cfg) for w in wins[:8]])
        t1 = best_of(lambda: bn.chunk_logits(c1), args.repeat) * 1e3
        tb = best_of(lambda: bn.chunk_logits(cb), args.repeat) * 1e3 / 8
        rows.append([f"BirdNET: LiteRT invoke, 3 chunks ({args.threads} threads)", t1, tb])
        emb = any(m.runtime == "birdnet-head" for m in seq.members)
        bn1 = BirdNET(seq.labels, num_threads=1, embeddings=emb)
        t1 = best_of(lambda: bn1.chunk_logits(c1), args.repeat) * 1e3
        tb = best_of(lambda: bn1.chunk_logits(cb), args.repeat) * 1e3 / 8
        rows.append(["BirdNET: LiteRT invoke, 3 chunks (1 thread)", t1, tb])
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
    conc.close()
    print(f"package {seq.describe()}\n")
    print(table(["stage", "ms per window (1 window)", f"ms per window (batch of {args.batch})"], rows))


if __name__ == "__main__":
    main()
