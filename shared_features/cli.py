"""``silencio features …``: inspect the feature recipe and compute features of a file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

USER_ERRORS: tuple[type[BaseException], ...] = ()


def register(sub: Any) -> None:
    p = sub.add_parser(
        "features",
        help="the shared feature recipe (FeatureConfig, log-mel)",
        description="Inspect the one audio → log-mel recipe and compute features.",
    )
    g = p.add_subparsers(dest="cmd", metavar="SUBCOMMAND", required=True)

    info = g.add_parser("info", help="print a preset's FeatureConfig and fingerprint as JSON")
    info.add_argument("--preset", default="default", help="preset name (default, edge, panns)")
    info.set_defaults(func=cmd_info)

    comp = g.add_parser("compute", help="decode an audio file and write its windows' log-mel to .npz")
    comp.add_argument("file", type=Path, help="audio file (WAV, FLAC, OGG, Opus, MP3)")
    comp.add_argument("--out", type=Path, required=True, help="output .npz path")
    comp.add_argument("--preset", default="default", help="feature preset")
    comp.add_argument("--stride", type=float, default=None, help="window stride in seconds")
    comp.set_defaults(func=cmd_compute)

    bn = g.add_parser("birdnet", help="zero-shot BirdNET v2.4 species per 5 s window of audio files")
    bn.add_argument("files", type=Path, nargs="+", help="audio files")
    bn.add_argument(
        "--taxonomy", type=Path, help="taxonomy.csv (default: the El Silencio label space in the package)"
    )
    bn.add_argument("--top", type=int, default=3, help="species shown per window")
    bn.add_argument("--threshold", type=float, default=0.1, help="minimum probability shown")
    bn.set_defaults(func=cmd_birdnet)


def cmd_info(args: argparse.Namespace) -> int:
    from shared_features.config import get_preset

    print(json.dumps(get_preset(args.preset).to_dict(), indent=2, sort_keys=True))
    return 0


def cmd_birdnet(args: argparse.Namespace) -> int:
    import numpy as np

    from shared_features.audio import load_audio
    from shared_features.birdnet import BirdNET
    from shared_features.labels import LabelSpace, taxonomy_path
    from shared_features.windows import frame_windows

    labels = LabelSpace.from_taxonomy_csv(taxonomy_path(args.taxonomy))
    model = BirdNET(labels)
    print(
        f"BirdNET v2.4 (zero-shot; knows {int(model.known.sum())} of {len(labels)} species; "
        "model licence CC BY-NC-SA 4.0)"
    )
    for f in args.files:
        wins, times = frame_windows(load_audio(f))
        out = model.predict_windows(wins)
        for w, p in zip(times, out.probs):
            best = [i for i in np.argsort(-p)[: args.top] if p[i] >= args.threshold]
            names = "; ".join(f"{labels[i].display()} {p[i]:.2f}" for i in best) or "—"
            print(f"{f.name}\t{w.start:7.1f}-{w.end:7.1f} s\t{names}")
    return 0


def cmd_compute(args: argparse.Namespace) -> int:
    import numpy as np

    from shared_features.config import get_preset
    from shared_features.streaming import iter_window_features

    cfg = get_preset(args.preset)
    if args.stride is not None:
        cfg = cfg.replace(window_stride_seconds=args.stride)
    feats, starts, ends = [], [], []
    for w, f in iter_window_features(args.file, cfg):
        feats.append(f)
        starts.append(w.start)
        ends.append(w.end)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        features=np.stack(feats),
        start=np.array(starts),
        end=np.array(ends),
        feature_config=np.array(cfg.to_json()),
    )
    print(
        f"{args.file}: {len(feats)} windows of {cfg.n_mels}×{cfg.n_frames} "
        f"(fingerprint {cfg.fingerprint()}) → {args.out}"
    )
    return 0
