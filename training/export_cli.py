"""``silencio export …``: edge packages (ONNX fp32 / int8) from a trained checkpoint, checked on
real windows of a dataset, logged to MLflow and registered with aliases."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from training.errors import TrainingError

USER_ERRORS: tuple[type[BaseException], ...] = (TrainingError,)


def register(sub: Any) -> None:
    x = sub.add_parser(
        "export",
        help="export edge model packages (ONNX fp32, ONNX int8) with parity and accuracy checks",
        description="Export a checkpoint (the distilled student, usually) as edge packages.",
    )
    g = x.add_subparsers(dest="cmd", metavar="SUBCOMMAND", required=True)
    e = g.add_parser("edge", help="ONNX fp32 + int8 edge packages, checked against fp32 on real windows")
    e.add_argument("checkpoint", type=Path, help="model.pt from `silencio train fit|distill`")
    e.add_argument("--data", type=Path, required=True, help="dataset whose windows calibrate and check")
    e.add_argument("--out", type=Path, help="output root (default $SILENCIO_HOME/packages/edge-<time>)")
    e.add_argument("--formats", default="onnx-fp32,onnx-int8", help="comma-separated: onnx-fp32, onnx-int8")
    e.add_argument("--name", default="silencio-edge", help="package name")
    e.add_argument("--version", help="package version (default: the time)")
    e.add_argument("--min-agreement", type=float, default=0.90, help="minimum top-1 agreement with fp32")
    e.add_argument("--max-auc-drop", type=float, default=0.02, help="maximum macro ROC-AUC drop vs fp32")
    e.add_argument("--seed", type=int, default=0, help="split seed")
    e.add_argument(
        "--check-windows",
        type=int,
        default=4096,
        help="validation windows the exports are checked on (a seeded sample when there are more)",
    )
    e.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    e.add_argument("--experiment", default="silencio-edge", help="MLflow experiment name")
    e.set_defaults(func=cmd_edge)


def calibration_windows(data_dir: Path, train_windows: Any, seed: int = 0, n: int = 256) -> Any:
    """int8 calibration windows: ``n`` training windows plus up to ``n`` windows of the unlabelled
    soundscapes — what the device will hear — when the dataset has any."""
    import numpy as np

    from training.distill import FileWindows, unlabelled_soundscapes

    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(train_windows))[:n]
    if isinstance(train_windows, np.ndarray):
        calib = train_windows[pick]
    else:  # a window set: decode only the picked windows
        from training.bundle import waveforms

        calib = waveforms(train_windows, [int(k) for k in pick])
    unl = FileWindows(unlabelled_soundscapes(data_dir))
    if len(unl):
        pick = rng.permutation(len(unl))[:n]
        calib = np.concatenate([calib, np.stack([unl.window(int(k)) for k in pick])])
    return calib


def cmd_edge(args: argparse.Namespace) -> int:
    import numpy as np

    from shared_features import DEFAULT, log_mel
    from shared_features.paths import home
    from training.bundle import waveforms
    from training.data import from_audio
    from training.export import PublishThresholds, export_edge
    from training.tracking import MLflowTracker, NullTracker

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or home() / "packages" / f"edge-{stamp}"
    data = from_audio(args.data, DEFAULT, seed=args.seed, soundscapes=False)
    calib = calibration_windows(args.data, data.train, args.seed)
    feats_cal = np.concatenate([log_mel(calib[i : i + 32], DEFAULT) for i in range(0, len(calib), 32)])
    # the check set: every validation window, or a seeded sample of --check-windows of them; decoded
    # 32 at a time, only their features kept (a whole split's audio does not fit in memory at scale)
    n_val = len(data.val)
    keep = np.arange(n_val)
    if n_val > args.check_windows:
        keep = np.sort(np.random.default_rng(args.seed).permutation(n_val)[: args.check_windows])
    feats_val = np.concatenate(
        [log_mel(waveforms(data.val, keep[i : i + 32].tolist()), DEFAULT) for i in range(0, len(keep), 32)]
    )
    yv = np.asarray(data.val.target_matrix(), np.float32)[keep]
    tracker = NullTracker() if args.no_mlflow else MLflowTracker(args.experiment, run_name="edge-export")
    try:
        mans = export_edge(
            args.checkpoint,
            out,
            parity=feats_val[:8],
            calibration=feats_cal,
            check=feats_val,
            check_targets=yv,
            name=args.name,
            version=args.version or stamp,
            formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
            thresholds=PublishThresholds(args.min_agreement, args.max_auc_drop),
        )
        tracker.log_params({"member": "edge", "checkpoint": str(args.checkpoint), "data": data.description})
        first = next(iter(mans.values()))
        if "best_val_roc_auc" in first["metrics"]:  # the registry's promotion metric
            tracker.log_metrics({"best_val_roc_auc": float(first["metrics"]["best_val_roc_auc"])})
        for fmt, man in mans.items():
            v = man["validation"].get("vs_fp32", {})
            tracker.log_metrics({f"{fmt}_{k}": float(val) for k, val in v.items()})
            tracker.log_metrics({f"{fmt}_bytes": float(man["members"][0]["bytes"])})
            tracker.log_artifact(out / fmt, f"edge/{fmt}")
        if tracker.run_id and "onnx-int8" in mans:
            tracker.register("silencio-edge", "edge/onnx-int8", alias="candidate")
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()
    for fmt, man in mans.items():
        m = man["members"][0]
        v = man["validation"].get("vs_fp32")
        figs = (
            f"; vs fp32 on {int(v['windows'])} validation windows: "
            f"top-1 agreement {v['top1_agreement']:.3f}, "
            f"macro ROC-AUC {v['roc_auc']:.4f} (fp32 {v['roc_auc_fp32']:.4f})"
            if v
            else f"; parity vs PyTorch {man['validation']['parity']['max_abs_diff_vs_torch']:.1e}"
        )
        print(f"{fmt}: {out / fmt} ({m['bytes'] / 1e6:.2f} MB){figs}")
    return 0
