"""int8 recipes for the edge student, side by side with its fp32 export, on one dataset in one run.

    .venv/bin/python benchmarks/edge_int8.py CHECKPOINT --data DATASET [--recipes all] [--repeat 50]
        [--qat-epochs 1,2]

``CHECKPOINT``: a trained student (``silencio train distill`` / the demo's ``student.pt``);
``DATASET``: the dataset it was trained on (the demo's synthetic one, or a BirdCLEF download). The
windows are those of ``silencio export edge``: int8 calibration on training windows plus
unlabelled soundscapes (:func:`training.export.calibration_windows`), agreement and ROC-AUC on
the validation split, and — when the dataset has their truth — on the held-out labelled
soundscapes (never trained on). For every recipe (:class:`training.export.Int8Recipe`): top-1
agreement with fp32 and macro ROC-AUC on both window sets, file size, and the model's latency on
one 5 s window (1 thread, best of ``--repeat``), and whether ``export_edge`` would publish it
(:class:`training.export.PublishThresholds`, judged on the validation windows as the export does).
``--qat-epochs N[,M…]`` adds, per N, the default recipe after N epochs of quantisation-aware
fine-tuning (:mod:`training.qat`, as ``silencio export edge --int8-qat-epochs N`` does; compared
with the *original* fp32 export), and prints each fine-tuning's CPU time and simulated agreement.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from benchmarks._table import best_of, table  # noqa: E402

RECIPES = {
    "baseline (all int8, minmax)": {},
    "SE in float": {"keep_float": ("se",)},
    "first+head in float": {"keep_float": ("first", "head")},
    "head in float": {"keep_float": ("head",)},
    "SE+head in float": {"keep_float": ("se", "head")},
    "SE+first+head in float": {"keep_float": ("se", "first", "head")},
    "per-tensor weights": {"per_channel": False},
    "entropy calibration": {"calibration": "entropy"},
    "percentile 99.99 calibration": {"calibration": "percentile", "percentile": 99.99},
    "SE+head float, percentile 99.99": {
        "keep_float": ("se", "head"),
        "calibration": "percentile",
        "percentile": 99.99,
    },
}


def _probs(path: Path, feats: np.ndarray) -> np.ndarray:
    from shared_features.package import onnx_runner

    run = onnx_runner(path, threads=1)
    return np.concatenate([run(feats[i : i + 32]) for i in range(0, len(feats), 32)])


def _names(arg: str) -> list[str]:
    """Recipe names from a comma-separated list (a name may itself hold a comma)."""
    names, part = [], ""
    for tok in arg.split(","):
        part = f"{part},{tok}" if part else tok.strip()
        if part in RECIPES:
            names.append(part)
            part = ""
    if part:
        raise SystemExit(f"unknown recipe {part!r}; known: {list(RECIPES)}")
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--recipes", default="all", help="comma-separated names of RECIPES, or all")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--qat-epochs", default="", help="comma-separated QAT epochs for extra rows (e.g. 1,2)")
    args = ap.parse_args()

    from threadpoolctl import threadpool_limits

    from shared_features import DEFAULT, log_mel
    from training.bundle import windows_of
    from training.data import from_audio
    from training.dataset import read_solution_csv
    from training.export import (
        DEFAULT_INT8,
        Int8Recipe,
        PublishThresholds,
        calibration_windows,
        export_onnx,
        int8_export,
    )
    from training.metrics import birdclef_roc_auc

    d = from_audio(args.data, DEFAULT, soundscapes=True)
    xt, _ = windows_of(d.train)
    xv, yv = windows_of(d.val)
    calib = log_mel(calibration_windows(args.data, xt))
    fv = log_mel(xv)
    sets = {"validation": (fv, yv >= 0.5)}
    if d.soundscapes is not None:
        _, _, ys = read_solution_csv(d.soundscapes.truth_csv, d.labels)
        sets["held-out soundscapes"] = (d.soundscapes.features, ys >= 0.5)
    names = list(RECIPES) if args.recipes == "all" else _names(args.recipes)
    recipes = {name: Int8Recipe(**RECIPES[name]) for name in names}  # type: ignore[arg-type]
    for e in (int(x) for x in args.qat_epochs.split(",") if x.strip()):
        recipes[f"SE+head float, percentile 99.99 + QAT {e} epoch{'s' if e > 1 else ''}"] = Int8Recipe(
            **{**asdict(DEFAULT_INT8), "qat_epochs": e}
        )
    qat_notes: list[str] = []
    limits = PublishThresholds()
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(1):
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(args.checkpoint, fp32, fv[:8])
        ref = {k: _probs(fp32, f) for k, (f, _) in sets.items()}
        one = fv[:1]

        def row(name: str, path: Path) -> list[object]:
            from shared_features.package import onnx_runner

            run = onnx_runner(path, threads=1)
            lat = best_of(lambda: run(one), args.repeat, warmup=3)
            cells: list[object] = [name]
            agree_val = 1.0
            for k, (f, y) in sets.items():
                p = ref[k] if path == fp32 else _probs(path, f)
                agree = float((p.argmax(1) == ref[k].argmax(1)).mean())
                agree_val = agree if k == "validation" else agree_val
                cells += [agree, birdclef_roc_auc(y, p)]
            auc_drop = float(cells[2]) - birdclef_roc_auc(sets["validation"][1], ref["validation"])
            ok = path == fp32 or (
                agree_val >= limits.min_top1_agreement and -auc_drop <= limits.max_roc_auc_drop
            )
            return [*cells, path.stat().st_size / 1e6, lat * 1e3, "yes" if ok else "no"]

        rows = [row("fp32 (reference)", fp32)]
        for name, recipe in recipes.items():
            out = Path(tmp) / f"{len(rows)}.onnx"
            _, qat = int8_export(args.checkpoint, fp32, out, calib, fv[:8], recipe)
            rows.append(row(f"int8: {name}", out))
            if qat is not None:
                sim, loss = qat["simulated_top1_agreement"], [round(x, 4) for x in qat["loss"]]
                qat_notes.append(
                    f"{name}: fine-tuned {qat['epochs']} epochs on {qat['windows']} calibration windows in "
                    f"{qat['seconds']:.0f} s; distillation loss ({qat['objective']}) per epoch {loss}; "
                    f"simulated int8 top-1 agreement on them {sim['before']:.3f} → {sim['after']:.3f}"
                )
    header = ["export"]
    for k in sets:
        header += [f"top-1 agreement ({k})", f"ROC-AUC ({k})"]
    header += ["MB", "ms / window (1 thread)", "published?"]
    print(
        f"student {args.checkpoint}; dataset {args.data}: {len(fv)} validation windows, "
        f"{len(sets.get('held-out soundscapes', ([],))[0])} held-out soundscape windows, "
        f"{len(calib)} calibration windows; publish thresholds: top-1 agreement ≥ "
        f"{limits.min_top1_agreement}, ROC-AUC drop ≤ {limits.max_roc_auc_drop} (validation)\n"
    )
    print(table(header, rows))
    for note in qat_notes:
        print(note)


if __name__ == "__main__":
    main()
