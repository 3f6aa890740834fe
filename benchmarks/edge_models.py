"""Edge model speed on real audio: the student (ONNX fp32, ONNX int8, TFLite) against BirdNET v2.4
(LiteRT), with 1 and 2 threads, in one run on the same machine.

    .venv/bin/python benchmarks/edge_models.py [--packages DIR] [--repeat 20]

``--packages`` is an export root holding ``onnx-fp32/``, ``onnx-int8/`` and optionally ``tflite/``
edge packages (from ``silencio export edge`` and ``scripts/export_tflite.sh``). Without it the
script exports the default student architecture with *untrained* weights (int8 calibrated on the
real windows) — latency does not depend on the weights, but then no accuracy is implied.

Per window (5 s of audio): the model time, the end-to-end time (numpy log-mel from the shared
recipe + model), and the real-time factor (processing seconds per audio second; lower is faster).
BirdNET is measured as its own analyzer runs it — 3 s chunks without overlap, resampling to 48 kHz
included — and as our 5 s-window member (three 3 s chunks per window). The last column is how many
times faster than BirdNET (native chunks, same thread count) each path is per second of audio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from benchmarks._table import best_of, table  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "birdclef2025_mini"
SOUNDSCAPE = DATA / "train_soundscapes" / "H02_20230420_074000.ogg"


def _default_packages(root: Path, windows: np.ndarray) -> Path:
    import torch

    from shared_features import LabelSpace, log_mel
    from training.export import PublishThresholds, export_edge
    from training.models import build_model, member_config, save_checkpoint

    labels = LabelSpace.from_taxonomy_csv(DATA / "taxonomy.csv")
    torch.manual_seed(0)
    model = build_model(member_config("student"), len(labels)).eval()
    ckpt = save_checkpoint(root / "student.pt", model, labels)
    feats = log_mel(windows)
    export_edge(
        ckpt,
        root / "packages",
        parity=feats[:4],
        calibration=feats,
        check=feats,
        check_targets=None,
        thresholds=PublishThresholds(0.0, 1.0),  # untrained weights: speed only
    )
    return root / "packages"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packages", type=Path, help="export root with onnx-fp32/, onnx-int8/, tflite/")
    ap.add_argument("--file", type=Path, default=SOUNDSCAPE)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()

    from threadpoolctl import threadpool_limits

    from shared_features import DEFAULT, frame_windows, load_audio, log_mel
    from shared_features.birdnet import BirdNET
    from shared_features.package import load_package

    audio = load_audio(args.file)
    windows, _ = frame_windows(audio)
    win_s = DEFAULT.window_seconds
    tmp = tempfile.TemporaryDirectory()
    root = args.packages or _default_packages(Path(tmp.name), windows)
    trained = args.packages is not None
    rows = []
    base: dict[int, float] = {}
    w0 = windows[0]
    for threads in (1, 2):
        with threadpool_limits(threads):
            bn = BirdNET(load_package(root / "onnx-fp32").labels, num_threads=threads, embeddings=False)
            chunks = bn.chunks_of(w0)
            t_native = best_of(lambda bn=bn, c=chunks: bn.chunk_logits(c[:1]), args.repeat)  # one 3 s chunk
            # resampling to 48 kHz, per second of audio, on the window
            from shared_features.audio import resample

            t_rs = best_of(lambda: resample(w0, DEFAULT.sample_rate, 48_000), args.repeat) / win_s
            per_s_native = t_native / 3.0 + t_rs
            base[threads] = per_s_native
            rows.append(
                [
                    "BirdNET v2.4 (LiteRT), native 3 s chunks",
                    threads,
                    t_native * 1e3,
                    per_s_native * win_s * 1e3,
                    per_s_native,
                    1.0,
                ]
            )
            t_win = best_of(lambda bn=bn: bn.predict_windows(w0[None]), max(3, args.repeat // 4))
            rows.append(
                [
                    "BirdNET member (3 chunks per 5 s window)",
                    threads,
                    t_win * 1e3,
                    t_win * 1e3,
                    t_win / win_s,
                    per_s_native / (t_win / win_s),
                ]
            )
            t_feat = best_of(lambda: log_mel(w0[None]), args.repeat)
            rows.append(["log-mel features (numpy, shared recipe)", threads, t_feat * 1e3, "", "", ""])
            feats = log_mel(w0[None])
            for fmt in ("onnx-fp32", "onnx-int8", "tflite"):
                d = root / fmt
                if not (d / "package.json").exists():
                    rows.append([f"student {fmt}: not exported", threads, "", "", "", ""])
                    continue
                pkg = load_package(d, threads=threads)
                pkg.predict_features(feats)
                t_model = best_of(lambda p=pkg, f=feats: p.predict_features(f), args.repeat)
                t_e2e = best_of(lambda p=pkg: p.predict(w0[None]), args.repeat)
                m = pkg.members[0]
                rows.append(
                    [
                        f"student {fmt} ({m.bytes / 1e6:.1f} MB)",
                        threads,
                        t_model * 1e3,
                        t_e2e * 1e3,
                        t_e2e / win_s,
                        per_s_native / (t_e2e / win_s),
                    ]
                )
    print(
        f"audio: {args.file.name} (real), window {win_s:.0f} s; best of {args.repeat}; "
        f"student weights: {'trained (' + str(root) + ')' if trained else 'UNTRAINED (speed only)'}\n"
    )
    print(
        table(
            [
                "path",
                "threads",
                "model ms / unit",
                "end-to-end ms / 5 s",
                "real-time factor",
                "× faster than BirdNET per audio s",
            ],
            rows,
        )
    )
    print(
        "\nunit: one 3 s chunk for BirdNET native, one 5 s window otherwise. End-to-end for the student"
        " = shared log-mel + model (ModelPackage.predict); for BirdNET = resampling + chunks."
    )
    tmp.cleanup()


if __name__ == "__main__":
    main()
