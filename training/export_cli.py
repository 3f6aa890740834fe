"""``silencio export …``: edge packages (ONNX fp32 / int8) from a trained checkpoint, checked on
real windows of a dataset, logged to MLflow and registered with aliases."""

from __future__ import annotations

import argparse
import datetime as dt
import json
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
    e.add_argument(
        "--int8-qat-epochs",
        type=int,
        default=0,
        help="quantisation-aware fine-tuning epochs (over the calibration windows) before the int8 "
        "quantisation; 0 = post-training quantisation only (default)",
    )
    e.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    e.add_argument("--experiment", default="silencio-edge", help="MLflow experiment name")
    e.set_defaults(func=cmd_edge)


def cmd_edge(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from shared_features.paths import home
    from training.export import DEFAULT_INT8, PublishThresholds
    from training.pipeline import Tracking, export_edge_packages

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or home() / "packages" / f"edge-{stamp}"
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    res = export_edge_packages(
        args.checkpoint,
        args.data,
        out,
        formats=formats,
        required=formats,  # every format asked for passes its checks, or nothing is published
        name=args.name,
        version=args.version or stamp,
        thresholds=PublishThresholds(args.min_agreement, args.max_auc_drop),
        seed=args.seed,
        check_windows=args.check_windows,
        int8=replace(DEFAULT_INT8, qat_epochs=args.int8_qat_epochs),
        tracking=Tracking(experiment=args.experiment, run_name="edge-export", track=not args.no_mlflow),
    )
    for fmt, path in res.packages.items():
        man = json.loads((path / "package.json").read_text())
        m = man["members"][0]
        v = man["validation"].get("vs_fp32")
        figs = (
            f"; vs fp32 on {int(v['windows'])} validation windows: "
            f"top-1 agreement {v['top1_agreement']:.3f}, "
            f"macro ROC-AUC {v['roc_auc']:.4f} (fp32 {v['roc_auc_fp32']:.4f})"
            if v
            else f"; parity vs PyTorch {man['validation']['parity']['max_abs_diff_vs_torch']:.1e}"
        )
        print(f"{fmt}: {path} ({m['bytes'] / 1e6:.2f} MB){figs}")
    if res.registered:
        print(f"registered {res.registered.name} v{res.registered.version} @candidate ({res.chosen.name})")
    return 0
