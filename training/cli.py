"""``silencio data …`` and ``silencio eval``. Thin: parse, call one library function, print.
Heavy imports happen inside the commands."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.errors import TrainingError

USER_ERRORS: tuple[type[BaseException], ...] = (TrainingError, FileExistsError)


def _bar(desc: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    from training.progress import progress_bar

    return progress_bar(desc)


def register(sub: Any) -> None:
    data = sub.add_parser(
        "data",
        help="BirdCLEF data: validate, prepare features, splits, synthetic data",
        description="Work with datasets in the BirdCLEF 2025 layout.",
    )
    g = data.add_subparsers(dest="cmd", metavar="SUBCOMMAND", required=True)

    v = g.add_parser("validate", help="report counts, durations, rates, missing/corrupt files of a dataset")
    v.add_argument("dir", type=Path, help="dataset root (taxonomy.csv, train.csv, train_audio/)")
    v.add_argument(
        "--out",
        type=Path,
        default=None,
        help="report folder (default: $SILENCIO_HOME/reports/validation_<name>)",
    )
    v.add_argument("--workers", type=int, default=1, help="parallel processes")
    v.set_defaults(func=cmd_validate)

    p = g.add_parser("prepare", help="decode, window and featurise a dataset into a feature cache")
    p.add_argument("dir", type=Path, help="dataset root")
    p.add_argument("--out", type=Path, required=True, help="cache directory")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    p.add_argument("--preset", default="default", help="feature preset (default, panns)")
    p.add_argument("--no-soundscapes", action="store_true", help="skip train_soundscapes/")
    p.add_argument("--limit", type=int, default=None, help="only the first N recordings (smoke runs)")
    p.add_argument("--overwrite", action="store_true", help="rebuild a cache made with other features")
    p.set_defaults(func=cmd_prepare)

    s = g.add_parser("synth", help="write a synthetic El Silencio dataset in the BirdCLEF layout")
    s.add_argument("--out", type=Path, required=True, help="output directory")
    s.add_argument("--species", type=int, default=12, help="number of species (≥ 4)")
    s.add_argument("--clips", type=int, default=16, help="focal clips per species")
    s.add_argument("--soundscapes", type=int, default=8, help="1-minute soundscapes with ground truth")
    s.add_argument(
        "--unlabelled",
        type=int,
        default=0,
        help="extra 1-minute soundscapes without published truth (for pseudo-labelling)",
    )
    s.add_argument("--seed", type=int, default=0, help="random seed (output is deterministic for it)")
    s.set_defaults(func=cmd_synth)

    sp = g.add_parser("split", help="write train/val/test and time-ordered initial/new splits to CSV")
    sp.add_argument("dir", type=Path, help="dataset root, or a train.csv / metadata CSV")
    sp.add_argument("--out", type=Path, required=True, help="output CSV (filename, split, time_split)")
    sp.add_argument("--val", type=float, default=0.1, help="validation fraction")
    sp.add_argument("--test", type=float, default=0.1, help="test fraction")
    sp.add_argument("--seed", type=int, default=0, help="random seed")
    sp.set_defaults(func=cmd_split)

    e = sub.add_parser(
        "eval",
        help="score a predictions CSV against a truth CSV; write a report with plots",
        description="Compute BirdCLEF 2025 macro ROC-AUC, macro AP, per-class and top-k "
        "figures, and write report.md with PNG plots.",
    )
    e.add_argument("--predictions", type=Path, required=True, help="submission-format CSV")
    e.add_argument("--truth", type=Path, required=True, help="solution-format CSV (0/1)")
    e.add_argument("--out", type=Path, required=True, help="report directory")
    e.add_argument("--taxonomy", type=Path, default=None, help="taxonomy.csv (default: next to the truth)")
    e.add_argument("--data-name", default=None, help="name of the evaluated data for the report")
    e.set_defaults(func=cmd_eval)


def cmd_validate(args: argparse.Namespace) -> int:
    from training.validate import save_report, validate_dataset

    update, close = _bar("validate")
    try:
        rep = validate_dataset(args.dir, workers=args.workers, progress=update)
    finally:
        close()
    out = args.out
    if out is None:
        from shared_features.paths import home

        out = home() / "reports" / f"validation_{args.dir.resolve().name}"
    md, js = save_report(rep, out)
    print(
        f"{rep.n_recordings} recordings ({rep.n_files_ok} decodable, {len(rep.missing_files)} missing, "
        f"{len(rep.bad_files)} corrupt), {len(rep.species_counts)}/{rep.n_species_taxonomy} species, "
        f"{rep.n_soundscapes} soundscapes, {rep.durations['total_hours']:.2f} h of training audio"
    )
    for k, v in sorted(rep.class_counts.items()):
        print(f"  {k:10s} {v:6d} recordings")
    for pr in rep.problems:
        print(f"  problem: {pr}")
    print(f"report: {md}\n        {js}")
    return 0 if rep.usable else 1


def cmd_prepare(args: argparse.Namespace) -> int:
    from shared_features import get_preset
    from training.etl import prepare_cache

    cfg = get_preset(args.preset)
    update, close = _bar("prepare")
    try:
        m = prepare_cache(
            args.dir,
            args.out,
            cfg,
            workers=args.workers,
            soundscapes=not args.no_soundscapes,
            limit=args.limit,
            overwrite=args.overwrite,
            progress=update,
        )
    finally:
        close()
    print(
        f"cache {args.out}: {m['n_windows']} windows from {m['n_files']} files "
        f"({m['resumed_files']} reused), {m['n_bad_files']} bad files skipped; "
        f"features {m['fingerprint']}, dataset {m['dataset_fingerprint']}"
    )
    for k, v in m["bad_files"].items():
        print(f"  skipped {k}: {v}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from training.synth import SynthConfig, generate

    update, close = _bar("synth")
    try:
        s = generate(
            args.out,
            SynthConfig(
                species=args.species,
                clips_per_species=args.clips,
                soundscapes=args.soundscapes,
                unlabelled_soundscapes=args.unlabelled,
                seed=args.seed,
            ),
            progress=update,
        )
    finally:
        close()
    print(
        f"SYNTHETIC dataset at {args.out}: {len(s['species'])} species, {s['clips']} clips, "  # type: ignore[arg-type]
        f"{s['soundscapes']} soundscapes with truth in soundscape_solution.csv, "
        f"{s['unlabelled_soundscapes']} without"
    )
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    import csv

    from training.dataset import read_train_csv
    from training.splits import SplitConfig, split_summary, stratified_group_split, time_ordered_split

    path = args.dir / "train.csv" if args.dir.is_dir() else args.dir
    recs = read_train_csv(path)
    split = stratified_group_split(recs, SplitConfig(args.val, args.test, args.seed))
    tsplit = time_ordered_split(recs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["filename", "primary_label", "split", "time_split"])
        for r, s_, t in zip(recs, split, tsplit):
            w.writerow([r.filename, r.primary_label, s_, t])
    for name, d in {**split_summary(recs, split), **split_summary(recs, tsplit)}.items():
        print(f"{name:8s} {d['recordings']:6d} recordings {d['species']:4d} species")
    print(f"wrote {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from training.report import write_report

    rep = write_report(
        args.predictions, args.truth, args.out, taxonomy=args.taxonomy, data_name=args.data_name
    )
    print(f"data: {rep.data}")
    print(
        f"macro ROC-AUC {rep.macro_roc_auc:.4f}  macro AP {rep.macro_ap:.4f}  "
        + (f"top-1 {rep.top1:.3f}  top-5 {rep.top5:.3f}  " if rep.top1 is not None else "")
        + f"({rep.n_species_scored} species scored, {rep.n_windows} windows)"
    )
    for c, m in rep.per_class.items():
        print(f"  {c:10s} ROC-AUC {m['roc_auc']:.4f}  AP {m['ap']:.4f}")
    print(f"report: {args.out / 'report.md'}")
    return 0
