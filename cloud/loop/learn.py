"""Steps 2–5 of a loop run (learn, gate, ship, report), each through the pipeline's functions
(:mod:`training.pipeline`); see :mod:`cloud.loop` for the whole story."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from cloud.loop import PRODUCTION_FILE, LoopConfig, LoopResult, Production, _write_json, loop_dir
from cloud.loop.feedback import NOT_AN_ANIMAL, FeedbackDataset, FeedbackRow

log = logging.getLogger(__name__)


def _log_dataset(tracker: Any, ds: FeedbackDataset, files: Sequence[Path]) -> None:
    """The feedback dataset as the loop run's MLflow dataset input, and its files as artifacts."""
    for f in files:
        tracker.log_artifact(f, "feedback_dataset")
    tracker.log_params(
        {
            "feedback_dataset": ds.name,
            "feedback_sha256": ds.sha256,
            "feedback_clips": len(ds.rows),
            "feedback_cursor": json.dumps(asdict(ds.cursor)),
        }
    )
    tracker.log_metrics(
        {
            **{f"verdicts_{k}": float(v) for k, v in ds.summary()["verdicts"].items()},
            **{f"source_{k}": float(v) for k, v in ds.by_source.items()},
            "conflicts": float(sum(ds.conflicts.values())),
        }
    )
    if getattr(tracker, "run_id", None) is None:
        return
    import mlflow
    import pandas as pd

    df = pd.DataFrame(
        [
            {
                "clip_uuid": r.clip_uuid,
                "reported": r.reported or "",
                "verdict": r.verdict,
                "label": r.label or "",
                "source": r.source,
            }
            for r in ds.rows
        ]
    )
    with warnings.catch_warnings():  # MLflow registers two local-file source kinds and says so
        warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
        dataset = mlflow.data.from_pandas(df, source=str(files[0]), name=ds.name, digest=ds.sha256[:16])
    mlflow.log_input(dataset, context="feedback")


def _clip_scores(package: Any, path: str) -> np.ndarray:
    """``[n_species]`` the package's maximum score over a clip's 5 s windows."""
    from shared_features import DEFAULT, frame_windows, load_audio

    wins, _ = frame_windows(load_audio(Path(path), DEFAULT), DEFAULT)
    return np.asarray(package.predict(np.asarray(wins, np.float32)).probs, np.float64).max(axis=0)


def _verdict_scores(
    package_dir: Path, rows: Sequence[FeedbackRow]
) -> tuple[dict[str, list[float]], dict[str, list[bool]]]:
    """The package's score for the reported species on each judged clip, and whether it was right."""
    from shared_features.package import load_package

    pkg = load_package(package_dir)
    idx = {c: i for i, c in enumerate(pkg.labels.codes)}
    scores: dict[str, list[float]] = {}
    correct: dict[str, list[bool]] = {}
    for r in rows:
        if r.reported is None or r.reported not in idx:
            continue
        s = _clip_scores(pkg, r.path)
        scores.setdefault(r.reported, []).append(float(s[idx[r.reported]]))
        correct.setdefault(r.reported, []).append(r.verdict == "confirmed")
    return scores, correct


def heldout_figures(
    package_dir: Path, thresholds: dict[str, float], default: float, heldout: Any, held: Sequence[FeedbackRow]
) -> dict[str, Any]:
    """One model on the held-out soundscape windows (per species precision / recall at its
    thresholds, macro ROC-AUC) and on the held-back clips (truth → what it reports at threshold)."""
    from shared_features.package import load_package
    from training.metrics import birdclef_roc_auc

    pkg = load_package(package_dir)
    codes = list(pkg.labels.codes)
    probs = pkg.predict(heldout.windows).probs
    thr = np.array([float(thresholds.get(c, default)) for c in codes])
    pred = probs >= thr
    y = np.asarray(heldout.targets, bool)
    per: dict[str, dict[str, float | int | None]] = {}
    for j, c in enumerate(codes):
        tp = int((pred[:, j] & y[:, j]).sum())
        fp = int((pred[:, j] & ~y[:, j]).sum())
        fn = int((~pred[:, j] & y[:, j]).sum())
        per[c] = {
            "threshold": float(thr[j]),
            "positives": int(y[:, j].sum()),
            "reported": tp + fp,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
        }
    clips = []
    idx = {c: i for i, c in enumerate(codes)}
    for r in held:
        s = _clip_scores(pkg, r.path)
        reported = sorted((codes[i] for i in np.flatnonzero(s >= thr)), key=lambda c: -s[idx[c]])
        clips.append({"truth": r.label or NOT_AN_ANIMAL, "reported": reported[0] if reported else None})
    return {
        "macro_roc_auc": float(birdclef_roc_auc(y, probs)),
        "species": per,
        "held_back": clips,
        "probs": probs,
    }


def learn_gate_ship(
    cfg: LoopConfig,
    home: Path,
    cloud: Any,
    ds: FeedbackDataset,
    production: Production,
    train_rows: list[FeedbackRow],
    calib_rows: list[FeedbackRow],
    held_rows: list[FeedbackRow],
    work: Path,
    stamp: str,
) -> LoopResult:
    from training.tracking import tracked_run

    work.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- 1. the dataset, tracked
    files = ds.write(loop_dir(home) / "datasets")
    with tracked_run("silencio-loop", f"loop-{stamp}", track=cfg.track, tags={"loop": stamp}) as tracker:
        _log_dataset(tracker, ds, files)
        loop_run = tracker.run_id
    try:
        return _learn_gate_ship(
            cfg, home, cloud, ds, production, train_rows, calib_rows, held_rows, work, stamp, loop_run
        )
    except BaseException:
        if cfg.track and loop_run is not None:  # each step's own run already ended FAILED / KILLED
            from mlflow import MlflowClient

            MlflowClient().set_tag(loop_run, "outcome", "failed")
        raise


def _learn_gate_ship(
    cfg: LoopConfig,
    home: Path,
    cloud: Any,
    ds: FeedbackDataset,
    production: Production,
    train_rows: list[FeedbackRow],
    calib_rows: list[FeedbackRow],
    held_rows: list[FeedbackRow],
    work: Path,
    stamp: str,
    loop_run: str | None,
) -> LoopResult:
    from cloud.loop.report import write_report
    from training.data import DataSource, ExtraClip, ExtraClips
    from training.gate import EdgeModel, FeedbackClip, FeedbackSet, heldout_from_dataset
    from training.loop import TrainConfig
    from training.models.checkpoint import read_meta
    from training.models.config import ModelConfig
    from training.pipeline import (
        RayOptions,
        Tracking,
        export_edge_packages,
        fit_species_thresholds,
        gate,
        make_release,
        train_embedding_head,
        train_member,
    )
    from training.thresholds import ThresholdConfig

    def tracking(step: str) -> Tracking:
        return Tracking(experiment="silencio-loop", run_name=f"loop-{stamp}-{step}", track=cfg.track)

    # ---------------------------------------------------------------- 2. learn
    extra = ExtraClips(
        f"{ds.name} training part",
        tuple(ExtraClip(Path(r.path), r.label) for r in train_rows),
        weight=cfg.feedback_weight,
    )
    mcfg = ModelConfig.from_dict(read_meta(production.student)["model_config"])
    tcfg = TrainConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
        threads=cfg.threads,
        warmup_epochs=0.0,
        patience=cfg.epochs + 1,
        **({} if cfg.augment else {"mixup_prob": 0.0, "specaugment": False, "wave_augment": False}),
    )
    member = train_member(
        DataSource(data_dir=Path(cfg.data_dir)),
        mcfg,
        tcfg,
        work / "student",
        tracking=tracking("student"),
        init_from=production.student,
        extra=extra,
        ray=RayOptions(workers=cfg.ray_workers) if cfg.ray else None,
        progress=False,
    )
    head = None
    if production.head is not None:
        head = train_embedding_head(
            Path(cfg.data_dir),
            work / "head",
            seed=cfg.seed,
            epochs=cfg.head_epochs,
            init_from=production.head,
            extra=extra,
            tracking=tracking("birdnet_head"),
            progress=False,
        )
    version = f"loop-{stamp}"
    exp = export_edge_packages(
        member.checkpoint,
        Path(cfg.data_dir),
        work / "edge",
        formats=cfg.formats,
        name="silencio-edge",
        version=version,
        seed=cfg.seed,
        tracking=tracking("edge-export"),
    )
    # thresholds from clips the candidate never trained on (all non-held-back ones without a
    # calibration part: its scores on its own training clips are optimistic)
    scores, correct = _verdict_scores(exp.chosen, calib_rows or train_rows)
    thr = fit_species_thresholds(
        scores,
        correct,
        work / "thresholds",
        config=ThresholdConfig(
            target_precision=cfg.target_precision,
            default_threshold=production.default_threshold,
            min_verdicts=cfg.min_verdicts,
        ),
        tracking=tracking("thresholds"),
    )
    # ---------------------------------------------------------------- 3. gate
    heldout = heldout_from_dataset(Path(cfg.data_dir))
    fb = FeedbackSet(
        f"{len(held_rows)} held-back clips of {ds.name}",
        tuple(FeedbackClip(Path(r.path), str(r.reported), r.verdict, r.correct_code) for r in held_rows),
    )
    candidate = EdgeModel(exp.chosen, dict(thr.thresholds), production.default_threshold)
    prod_model = EdgeModel(production.edge_package, dict(production.thresholds), production.default_threshold)
    decision = gate(
        candidate,
        prod_model,
        heldout,
        fb,
        work / "gate",
        registry=exp.registered,
        tracking=tracking("gate"),
    )
    before = heldout_figures(
        production.edge_package, production.thresholds, production.default_threshold, heldout, held_rows
    )
    after = heldout_figures(
        exp.chosen, dict(thr.thresholds), production.default_threshold, heldout, held_rows
    )
    # ---------------------------------------------------------------- 5. report (before shipping:
    # the manifest names it)
    report_dir = loop_dir(home) / "reports" / stamp
    report = write_report(
        report_dir,
        dataset=ds,
        train_clips=len(train_rows),
        calib_clips=len(calib_rows),
        held_clips=len(held_rows),
        decision=decision.to_dict(),
        before=before,
        after=after,
        codes=list(heldout.codes),
        thresholds=dict(thr.thresholds),
        production=production.release_version or str(production.edge_package),
        candidate=version,
        head=head.val_roc_auc if head is not None else None,
        mlflow_run=loop_run,
        labels=_package_labels(exp.chosen),
    )
    figures = {
        "before": {k: v for k, v in before.items() if k != "probs"},
        "after": {k: v for k, v in after.items() if k != "probs"},
        "thresholds": dict(thr.thresholds),
        "train_clips": len(train_rows),
        "calibration_clips": len(calib_rows),
        "held_back_clips": len(held_rows),
        "student_checkpoint": str(member.checkpoint),
        "candidate_package": str(exp.chosen),
    }
    (report_dir / "figures.json").write_text(json.dumps(figures, indent=2, default=str))
    release_info: dict[str, Any] | None = None
    # ---------------------------------------------------------------- 4. ship (promotion only)
    if decision.promoted:
        rel_report = report.relative_to(home) if report.is_relative_to(home) else report
        rel = make_release(
            exp.chosen,
            loop_dir(home) / "releases",
            thresholds=dict(thr.thresholds),
            default_threshold=production.default_threshold,
            threshold_fit=thr.fit_path,
            decision=decision,
            name="silencio-edge",
            version=version,
            source_runs={
                "loop": loop_run,
                "student": member.run_id,
                "edge_export": exp.run_id,
                "thresholds": thr.run_id,
                "gate": decision.run_id,
                "birdnet_head": head.run_id if head is not None else None,
            },
            tracking=tracking("release"),
            loop_report=str(rel_report),
        )
        info = cloud.publish_release(rel.directory)
        release_info = {
            "version": info["version"],
            "sha256": info["sha256"],
            "key_id": info.get("key_id"),
            "directory": str(rel.directory),
            "archive": str(rel.archive),
            "labels_sha256": rel.labels_sha256,
        }
        new = Production(
            rel.directory / "package",
            member.checkpoint,
            head.head if head is not None else production.head,
            dict(thr.thresholds),
            production.default_threshold,
            str(info["version"]),
        )
        _write_json(
            loop_dir(home) / PRODUCTION_FILE,
            {"current": new.to_dict(), "previous": production.to_dict(), "promoted_at": stamp},
        )
        status, message = "promoted", f"{decision.reason}; release {info['version']} published"
    else:
        status, message = "refused", f"{decision.reason}; nothing released, production unchanged"
    if cfg.track and loop_run is not None:
        from mlflow import MlflowClient

        client = MlflowClient()
        client.log_artifacts(loop_run, str(report_dir), "report")
        client.set_tag(loop_run, "outcome", status)
        client.set_tag(loop_run, "gate", decision.reason[:5000])
        if release_info:
            client.set_tag(loop_run, "release", release_info["version"])
    log.info("loop %s: %s", stamp, message)
    shutil.rmtree(work / "student" / "ray", ignore_errors=True)
    return LoopResult(
        status,
        message,
        ds.summary(),
        decision.to_dict(),
        release_info,
        report,
        loop_run,
        figures=figures,
    )


def _package_labels(package_dir: Path) -> Any:
    """The label space a package's manifest names (no runtime loaded)."""
    from shared_features.labels import LabelSpace

    return LabelSpace.from_dict(json.loads((Path(package_dir) / "package.json").read_text())["labels"])
