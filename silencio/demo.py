"""``silencio demo``: the whole loop, as far as it is built, on an embedded default.

Today: a synthetic El Silencio dataset → validation → feature cache → the centroid baseline →
a ResNet-50 member trained straight from audio for a few CPU minutes, tracked in the embedded
MLflow store and registered ``@candidate`` → exported to ONNX with a parity check → both scored
on the held-out synthetic soundscapes with evaluation reports. The stages still to come (the
full ensemble, distillation and int8/TFLite edge packages, the BentoML service, the edge agent and
its TUI, sync) are listed at the end, not faked. A second run reuses the dataset and the cache.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NOT_BUILT_YET = [
    "the other members and the fitted ensemble in the demo (each member trains with `silencio train fit`)",
    "distil the edge student, int8 / TFLite packages",
    "serve the ensemble with BentoML on 127.0.0.1",
    "replay a soundscape through the edge agent and its TUI, sync, tour report",
]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="run the whole loop on a synthetic dataset (or --data DIR)", description=__doc__
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="a real BirdCLEF 2025 download instead of the synthetic dataset",
    )
    p.add_argument("--species", type=int, default=12, help="synthetic species")
    p.add_argument("--seed", type=int, default=0, help="synthetic dataset seed")
    p.add_argument("--minutes", type=float, default=3.0, help="CPU time budget for training the member")
    p.add_argument("--quick", action="store_true", help="a small dataset and a tiny model for one epoch (CI)")
    p.add_argument("--workers", type=int, default=2, help="ETL processes")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from shared_features.paths import home
    from training.baseline import CentroidBaseline
    from training.cli import _bar
    from training.data import load_soundscapes
    from training.dataset import write_solution_csv
    from training.etl import FeatureCache, prepare_cache
    from training.report import write_report
    from training.synth import SynthConfig, generate
    from training.validate import save_report, validate_dataset

    root = home() / "demo"
    if args.data is None:
        cfg = SynthConfig(
            species=args.species,
            seed=args.seed,
            **({"clips_per_species": 6, "soundscapes": 3} if args.quick else {"clips_per_species": 30}),
        )
        tag = f"synth_s{cfg.species}_c{cfg.clips_per_species}_k{cfg.soundscapes}_seed{cfg.seed}"
        data = root / tag / "dataset"
        if (data / "SYNTHETIC.md").exists() and (data / "soundscape_solution.csv").exists():
            print(f"[1/7] synthetic dataset: reusing {data}")
        else:
            print(f"[1/7] synthetic dataset ({cfg.species} species, seed {cfg.seed}) → {data}")
            update, close = _bar("synth")
            try:
                generate(data, cfg, progress=update)
            finally:
                close()
    else:
        data, tag = args.data, f"data_{args.data.resolve().name}"
        print(f"[1/7] dataset: {data}")
    work = root / tag
    print("[2/7] validating")
    rep = validate_dataset(data)
    md, _ = save_report(rep, work / "validation")
    print(
        f"      {rep.n_files_ok}/{rep.n_recordings} recordings decodable, "
        f"{len(rep.species_counts)} species, {rep.n_soundscapes} soundscapes → {md}"
    )
    print("[3/7] feature cache")
    update, close = _bar("prepare")
    try:
        m = prepare_cache(data, work / "cache", workers=args.workers, progress=update)
    finally:
        close()
    print(f"      {m['n_windows']} windows ({m['resumed_files']} files reused), features {m['fingerprint']}")
    cache = FeatureCache(work / "cache")
    truth = data / "soundscape_solution.csv"
    summary: dict[str, Any] = {"dataset": str(data), "cache": str(work / "cache")}
    print("[4/7] baseline: nearest class-centroid of mel profiles, fitted on the training clips")
    baseline = CentroidBaseline.fit(cache)
    if truth.exists():
        scapes = load_soundscapes(cache, truth)
        pred = work / "baseline_predictions.csv"
        write_solution_csv(pred, scapes.row_ids, baseline.predict(scapes.features), cache.labels)
        b = write_report(
            pred,
            truth,
            work / "baseline_report",
            data_name=f"synthetic soundscapes of {data} (held out: never used to fit)",
            model_name="centroid baseline (not a trained network)",
        )
        summary["baseline"] = b.as_flat_dict()
        print(f"      held-out soundscapes: macro ROC-AUC {b.macro_roc_auc:.3f}, macro AP {b.macro_ap:.3f}")
    res = _train(args, data, work)
    summary["member"] = {
        "checkpoint": str(res.checkpoint),
        "run_id": res.run_id,
        "best_val_roc_auc": res.best_val_roc_auc,
        "soundscape": res.soundscape,
    }
    print("[6/7] export edge packages: ONNX fp32 (parity vs PyTorch) and int8 (checked vs fp32)")
    from training.dataset import read_solution_csv
    from training.export import export_edge

    rows = cache.rows("train")
    feats = np.stack([cache.features(i) for i in rows[:: max(1, len(rows) // 96)]])
    check, check_y = None, None
    if truth.exists():  # compare the int8 export with fp32 on the labelled soundscape windows
        check = scapes.features
        _, _, check_y = read_solution_csv(truth, cache.labels)
    from training.export import ExportError

    mans = {}
    for fmt in ("onnx-fp32", "onnx-int8"):
        try:
            mans.update(
                export_edge(
                    res.checkpoint,
                    work / "edge_packages",
                    parity=feats[:8],
                    calibration=feats,
                    check=check if check is not None else feats,
                    check_targets=check_y,
                    name="silencio-demo-edge",
                    version=str(res.run_id or "local"),
                    formats=(fmt,),
                )
            )
        except ExportError as exc:  # an int8 model worse than fp32 is refused, and the demo says so
            print(f"      {fmt}: not published — {exc}")
    for fmt, man in mans.items():
        m = man["members"][0]
        v = man["validation"].get("vs_fp32", {})
        agree = f", top-1 agreement with fp32 {v['top1_agreement']:.3f}" if v else ""
        print(f"      {fmt}: {m['bytes'] / 1e6:.1f} MB, sha256 {m['sha256'][:12]}…{agree}")
    summary["edge_packages"] = mans
    print("[7/7] summary")
    if res.soundscape and "baseline" in summary:
        print(
            f"      held-out soundscape macro ROC-AUC: baseline {summary['baseline']['macro_roc_auc']:.3f}, "
            f"ResNet-50 {res.soundscape['macro_roc_auc']:.3f}"
        )
    (work / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _tail(work)
    return 0


def _train(args: argparse.Namespace, data: Path, work: Path):  # type: ignore[no-untyped-def]
    from shared_features import DEFAULT
    from training.data import from_audio
    from training.loop import TrainConfig, fit
    from training.models import member_config
    from training.tracking import MLflowTracker, tracking_uri

    if args.quick:
        mcfg = member_config("resnet50", timm_name="resnet10t", input_downsample=4)
        tcfg = TrainConfig(epochs=1, batch_size=16)
        what = "a tiny ResNet (resnet10t) for one epoch (--quick)"
    else:
        mcfg = member_config("resnet50", input_downsample=2)
        tcfg = TrainConfig(epochs=40, lr=2e-3, patience=30, max_minutes=args.minutes)
        what = f"ResNet-50 (2× pooled input) for {args.minutes:g} CPU minutes"
    print(f"[5/7] training {what} straight from audio; MLflow: {tracking_uri()}")
    tracker = MLflowTracker("silencio-demo", run_name=f"demo-{mcfg.name}")
    try:
        res = fit(mcfg, tcfg, from_audio(data, DEFAULT), work / "member", tracker=tracker)
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()
    print(
        f"      best validation macro ROC-AUC {res.best_val_roc_auc:.3f} "
        f"(epoch {res.best_epoch}, {res.stopped}); "
        f"MLflow run {res.run_id}, registered silencio-{mcfg.name}@candidate"
    )
    if res.soundscape:
        print(
            f"      held-out soundscapes: macro ROC-AUC {res.soundscape['macro_roc_auc']:.3f}, "
            f"macro AP {res.soundscape['macro_ap']:.3f}; report {res.report}"
        )
    return res


def _tail(work: Path) -> None:
    from training.tracking import tracking_uri

    print(
        f"\nlook next: {work / 'member' / 'report' / 'report.md'} (member report), "
        f"{work / 'baseline_report' / 'report.md'} (baseline), {work / 'validation'} (validation)"
    )
    print(f"           mlflow ui --backend-store-uri {tracking_uri()}   (then http://127.0.0.1:5000)")
    print("not built yet (coming with their issues):")
    for s in NOT_BUILT_YET:
        print(f"  - {s}")
