"""The pipeline: one typed function per step, called alike by the CLIs (``silencio train …``,
``silencio export edge``), the demo and the loop's scheduler.

Steps, in the order a scheduler calls them (each takes typed inputs and returns a frozen result):

==============================  ==============================================================
:func:`select_training_data`    the windows a member trains on, from a :class:`DataSource` and
                                its configs — the same selection locally and on every Ray worker
:func:`train_member`            one CNN member (ResNet-50, EfficientNet-B0 [+ LoRA], CNN14 SED,
                                or the student), locally or under Ray Train → :class:`MemberResult`
:func:`train_embedding_head`    the linear head over BirdNET v2.4 (or Perch) embeddings
:func:`build_ensemble_package`  members + BirdNET as one ensemble package, weights fitted on
                                validation windows → :class:`EnsemblePackage`
:func:`distill_student`         the edge student from the ensemble (+ pseudo-labels)
:func:`export_edge_packages`    ONNX fp32 / int8 edge packages, checked → :class:`EdgeExport`
:func:`fit_species_thresholds`  per-species thresholds from verdicts (:mod:`training.thresholds`)
:func:`gate`                    candidate vs production on the frozen held-out set and the
                                held-back feedback clips (:mod:`training.gate`); aliases move only
                                on promotion → :class:`~training.gate.GateDecision`
:func:`make_release`            the edge release directory + archive (:mod:`training.release`)
==============================  ==============================================================

Every step owns one tracked run (:func:`training.tracking.tracked_run`: ``FINISHED`` when it
returns, ``FAILED`` when it raises, ``KILLED`` on Ctrl-C) and saves its resolved configuration
beside its outputs (``<out>/step.json``) and to the run (params ``step.*`` and the file). Its
result goes to ``<out>/result.json``; with ``reuse=True`` a step whose output directory already
holds a result *of the same configuration* returns it without running again (the demo's second
run; a scheduler that re-runs a step with nothing new). The plumbing: :mod:`training.steps`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from shared_features import LabelSpace
from training.data import DataSource, ExtraClips
from training.distill import DistillConfig
from training.errors import TrainingError
from training.export import DEFAULT_INT8, Int8Recipe, PublishThresholds
from training.gate import (
    EdgeModel,
    FeedbackSet,
    GateDecision,
    GateRefusal,
    GateRule,
    HeldOutSet,
    RefusalKind,
    decide,
    evaluate_model,
    labels_refusal,
)
from training.loop import TrainConfig, select_training_data
from training.models.config import ModelConfig
from training.release import ReleaseError, write_release
from training.steps import (
    Registered,
    Tracking,
    file_sha,
    jsonable,
    load_result,
    registered,
    save_result,
    step_run,
)
from training.thresholds import ThresholdConfig, fit_thresholds

log = logging.getLogger(__name__)

__all__ = [
    "DataSource",
    "EdgeExport",
    "ExtraClips",
    "EnsemblePackage",
    "HeadResult",
    "MemberResult",
    "RayOptions",
    "Registered",
    "Release",
    "StudentResult",
    "ThresholdResult",
    "Tracking",
    "build_ensemble_package",
    "distill_student",
    "export_edge_packages",
    "fit_species_thresholds",
    "gate",
    "make_release",
    "select_training_data",
    "train_embedding_head",
    "train_member",
]


# ----------------------------------------------------------------------------- types
@dataclass(frozen=True)
class RayOptions:
    workers: int = 2
    use_gpu: bool = False
    strategy: str = "ddp"  # or "fsdp"
    max_failures: int = 2


@dataclass(frozen=True)
class MemberResult:
    member: str
    checkpoint: Path
    best_epoch: int
    best_val_roc_auc: float
    stopped: str
    soundscape: Mapping[str, float] | None
    report: Path | None
    run_id: str | None
    registered: Registered | None
    merged_checkpoint: Path | None = None
    retrain_comparison: Mapping[str, float] | None = None


@dataclass(frozen=True)
class HeadResult:
    head: Path
    embedder: str
    val_roc_auc: float
    soundscape: Mapping[str, float] | None
    run_id: str | None


@dataclass(frozen=True)
class EnsemblePackage:
    package: Path
    weights: Mapping[str, float]
    val_roc_auc: float
    member_val_roc_auc: Mapping[str, float]
    soundscape: Mapping[str, Any] | None
    run_id: str | None
    registered: Registered | None


@dataclass(frozen=True)
class StudentResult:
    checkpoint: Path
    rounds: tuple[Mapping[str, Any], ...]
    teacher: str
    run_id: str | None
    registered: Registered | None


@dataclass(frozen=True)
class EdgeExport:
    """Published formats (format → package directory), refused ones (format → reason) and the
    package to ship: int8 when it passed its checks, else fp32."""

    packages: Mapping[str, Path]
    refused: Mapping[str, str]
    chosen: Path
    validation: Mapping[str, Mapping[str, Any]]
    version: str
    run_id: str | None
    registered: Registered | None


@dataclass(frozen=True)
class ThresholdResult:
    thresholds: Mapping[str, float]
    path: Path
    fit_path: Path
    n_species_judged: int
    n_verdicts: int
    run_id: str | None


@dataclass(frozen=True)
class Release:
    directory: Path
    archive: Path
    sha256: str
    name: str
    version: str
    labels_sha256: str
    thresholds: Mapping[str, float]
    run_id: str | None


# ----------------------------------------------------------------------------- members
def train_member(
    source: DataSource,
    mcfg: ModelConfig,
    tcfg: TrainConfig,
    out: Path,
    *,
    tracking: Tracking | None = None,
    device: str | None = None,
    init_from: Path | None = None,
    resume: bool = False,
    merge_lora: bool = False,
    ray: RayOptions | None = None,
    progress: bool = True,
    reuse: bool = False,
    extra: ExtraClips | None = None,
) -> MemberResult:
    """Train one member on :func:`select_training_data` of ``source`` (locally, or under Ray Train
    with ``ray``: the same selection on every worker); register it ``silencio-<member>@candidate``.
    ``init_from``: continue from that checkpoint; with a feature cache, old vs new model on both
    time-ordered parts is logged (``retrain_comparison.json``). ``merge_lora`` folds LoRA adapters
    into ``model_merged.pt``. ``extra``: clips added to the training windows (the closed loop's
    judged feedback clips; "not an animal" ones as all-zero targets), locally and on every Ray
    worker alike. Outputs in ``out``: ``model.pt``, ``config.json``, ``report/``."""
    config = {
        "source": source.to_dict(),
        "model": mcfg.to_dict(),
        "train": asdict(tcfg),
        "init_from": str(init_from) if init_from else None,
        "init_sha256": file_sha(Path(init_from)) if init_from else None,
        "merge_lora": merge_lora,
        "ray": asdict(ray) if ray else None,
        "device": device,
        "extra": extra.to_dict() if extra is not None else None,
    }
    if reuse and not resume:
        done = load_result(MemberResult, out, "train_member", config)
        if done is not None and done.checkpoint.exists():
            return done
    if ray is not None and resume:
        raise TrainingError("--resume is for local runs; under Ray, max_failures restarts failed workers")
    with step_run("train_member", out, config, tracking, "silencio-members", mcfg.name) as tracker:
        if ray is not None:
            from training.ray_train import fit_ray

            res = fit_ray(
                mcfg,
                tcfg,
                source,
                out,
                workers=ray.workers,
                use_gpu=ray.use_gpu,
                strategy=ray.strategy,
                max_failures=ray.max_failures,
                tracker=tracker,
                init_from=init_from,
                extra=extra,
            )
        else:
            from training.loop import fit

            res = fit(
                mcfg,
                tcfg,
                select_training_data(source, mcfg, tcfg, extra=extra),
                out,
                tracker=tracker,
                device=device,
                init_from=init_from,
                resume=resume,
                progress=progress,
                register=False,
            )
        version = tracker.register(f"silencio-{mcfg.name}", "model", alias="candidate")
        cmp = None
        if init_from is not None and source.cache is not None:
            from training.retrain import retrain_comparison

            cmp = retrain_comparison(init_from, res.checkpoint, source.cache, seed=tcfg.seed)
            tracker.log_metrics(cmp)
            (Path(out) / "retrain_comparison.json").write_text(json.dumps(cmp, indent=2))
        merged = None
        if merge_lora and mcfg.lora_rank:
            from training.models.checkpoint import load_checkpoint, save_checkpoint
            from training.models.factory import merge_lora as fold

            model, labels, blob = load_checkpoint(res.checkpoint)
            merged = save_checkpoint(
                Path(out) / "model_merged.pt", fold(model), labels, metrics=blob["metrics"], run_id=res.run_id
            )
            tracker.log_artifact(merged, "model_merged")
        result = MemberResult(
            member=mcfg.name,
            checkpoint=Path(res.checkpoint),
            best_epoch=res.best_epoch,
            best_val_roc_auc=float(res.best_val_roc_auc),
            stopped=res.stopped,
            soundscape=res.soundscape,
            report=res.report,
            run_id=tracker.run_id,
            registered=registered(f"silencio-{mcfg.name}", version),
            merged_checkpoint=merged,
            retrain_comparison=cmp,
        )
        save_result(tracker, out, "train_member", result)
    return result


def train_embedding_head(
    data_dir: Path,
    out: Path,
    *,
    seed: int = 0,
    epochs: int = 400,
    embedder: object | None = None,
    init_from: Path | None = None,
    tracking: Tracking | None = None,
    progress: bool = True,
    reuse: bool = False,
    extra: ExtraClips | None = None,
) -> HeadResult:
    """The linear head over BirdNET v2.4 embeddings (or ``embedder``'s: Perch) for every species
    of ``data_dir``, early-stopped on validation (continuing from the head ``init_from``, e.g.
    production's; ``extra`` clips added to its training windows); ``out/head.npz`` and, with
    truth, ``report/``."""
    from training.birdnet_head import train_birdnet_head
    from training.loop import seed_everything

    name = str(getattr(embedder, "name", "birdnet")) if embedder is not None else "birdnet"
    config = {
        "data_dir": str(Path(data_dir).resolve()),
        "seed": seed,
        "epochs": epochs,
        "embedder": name,
        "init_from": str(Path(init_from).resolve()) if init_from else None,
        "init_sha256": file_sha(Path(init_from)) if init_from else None,
        "extra": extra.to_dict() if extra is not None else None,
    }
    if reuse:
        done = load_result(HeadResult, out, "train_embedding_head", config)
        if done is not None and done.head.exists():
            return done
    with step_run(
        "train_embedding_head", out, config, tracking, "silencio-members", f"{name}_head"
    ) as tracker:
        seed_everything(seed)
        res = train_birdnet_head(
            Path(data_dir),
            Path(out),
            seed=seed,
            epochs=epochs,
            tracker=tracker,
            embedder=embedder,
            progress=progress,
            init_from=init_from,
            extra=extra,
        )
        val = res["val"]
        assert isinstance(val, dict)
        sc = res.get("soundscape")
        result = HeadResult(
            head=Path(str(res["head"])),
            embedder=name,
            val_roc_auc=float(val.get("val_roc_auc", float("nan"))),
            soundscape=dict(sc) if isinstance(sc, dict) else None,
            run_id=tracker.run_id,
        )
        save_result(tracker, out, "train_embedding_head", result)
    return result


# ------------------------------------------------------------------------ ensemble, student
def build_ensemble_package(
    data_dir: Path,
    out: Path,
    *,
    checkpoints: Sequence[Path],
    birdnet_head: Path | None = None,
    birdnet: bool = True,
    name: str = "silencio-ensemble",
    version: str | None = None,
    seed: int = 0,
    trials: int = 200,
    threads: int = 2,
    tracking: Tracking | None = None,
    progress: bool = True,
    reuse: bool = False,
    register_as: str | None = "silencio-ensemble",
) -> EnsemblePackage:
    """Members (ONNX) + BirdNET head + BirdNET zero-shot as one ensemble package in ``out``, the
    weights fitted on ``seed``'s validation windows (``trials`` seeded candidates); registered as
    ``register_as@candidate``."""
    from training.bundle import build_ensemble

    config = {
        "data_dir": str(Path(data_dir).resolve()),
        "checkpoints": [str(Path(c).resolve()) for c in checkpoints],
        "birdnet_head": str(Path(birdnet_head).resolve()) if birdnet_head else None,
        "birdnet": birdnet,
        "name": name,
        "version": version,
        "seed": seed,
        "trials": trials,
        "threads": threads,
    }
    if reuse:
        done = load_result(EnsemblePackage, out, "build_ensemble_package", config)
        if done is not None and (done.package / "package.json").exists():
            return done
    with step_run(
        "build_ensemble_package", out, config, tracking, "silencio-ensemble", "ensemble"
    ) as tracker:
        res = build_ensemble(
            Path(data_dir),
            Path(out),
            checkpoints=list(checkpoints),
            birdnet_head=birdnet_head,
            birdnet=birdnet,
            name=name,
            version=version,
            seed=seed,
            trials=trials,
            tracker=tracker,
            threads=threads,
            progress=progress,
        )
        v = tracker.register(register_as, "model", alias="candidate") if register_as else None
        result = EnsemblePackage(
            package=res.package,
            weights=res.weights,
            val_roc_auc=float(res.val_roc_auc),
            member_val_roc_auc=res.member_val_roc_auc,
            soundscape=res.soundscape or None,
            run_id=tracker.run_id,
            registered=registered(register_as, v) if register_as else None,
        )
        save_result(tracker, out, "build_ensemble_package", result)
    return result


def distill_student(
    data_dir: Path,
    teacher: Path,
    out: Path,
    *,
    mcfg: ModelConfig | None = None,
    tcfg: TrainConfig | None = None,
    dcfg: DistillConfig | None = None,
    device: str | None = None,
    init_from: Path | None = None,
    tracking: Tracking | None = None,
    progress: bool = True,
    reuse: bool = False,
) -> StudentResult:
    """The edge student distilled from ``teacher`` (an ensemble package) on ``data_dir``'s clips
    and pseudo-labelled unlabelled soundscapes (continuing from the student checkpoint
    ``init_from``, e.g. production's); registered ``silencio-student@candidate``."""
    from training.distill import distill
    from training.models.config import member_config

    mcfg = mcfg or member_config("student")
    tcfg = tcfg or TrainConfig()
    dcfg = dcfg or DistillConfig()
    config = {
        "data_dir": str(Path(data_dir).resolve()),
        "teacher": str(Path(teacher).resolve()),
        "teacher_manifest_sha256": file_sha(Path(teacher) / "package.json"),
        "model": mcfg.to_dict(),
        "train": asdict(tcfg),
        "distill": asdict(dcfg),
        "device": device,
        "init_from": str(Path(init_from).resolve()) if init_from else None,
        "init_sha256": file_sha(Path(init_from)) if init_from else None,
    }
    if reuse:
        done = load_result(StudentResult, out, "distill_student", config)
        if done is not None and done.checkpoint.exists():
            return done
    with step_run("distill_student", out, config, tracking, "silencio-student", "student") as tracker:
        res = distill(
            Path(data_dir),
            Path(teacher),
            Path(out),
            mcfg=mcfg,
            tcfg=tcfg,
            dcfg=dcfg,
            tracker=tracker,
            device=device,
            progress=progress,
            register=False,
            init_from=init_from,
        )
        v = tracker.register("silencio-student", "model", alias="candidate")
        result = StudentResult(
            checkpoint=Path(res["checkpoint"]),
            rounds=tuple(jsonable(r) for r in res["rounds"]),
            teacher=str(res["teacher"]),
            run_id=tracker.run_id,
            registered=registered("silencio-student", v),
        )
        save_result(tracker, out, "distill_student", result)
    return result


# ------------------------------------------------------------------------------- export
def export_edge_packages(
    checkpoint: Path,
    data_dir: Path,
    out: Path,
    *,
    formats: tuple[str, ...] = ("onnx-fp32", "onnx-int8"),
    required: tuple[str, ...] = ("onnx-fp32",),
    name: str = "silencio-edge",
    version: str | None = None,
    thresholds: PublishThresholds | None = None,
    seed: int = 0,
    check_windows: int = 4096,
    tracking: Tracking | None = None,
    reuse: bool = False,
    register_as: str | None = "silencio-edge",
    int8: Int8Recipe | None = None,
) -> EdgeExport:
    """Edge packages ``out/<format>/`` of ``checkpoint``: fp32 parity-checked against PyTorch,
    int8 calibrated on 256 of ``data_dir``'s training windows (+ 256 of its unlabelled soundscapes)
    and compared with fp32 on its validation windows (a seeded sample of ``check_windows`` when there
    are more). Only those windows are decoded, so memory stays bounded at any dataset size. A
    ``required`` format that fails raises :class:`~training.export.ExportError`; another is refused
    with its reason. The chosen package (int8 when published, else fp32) is registered
    ``register_as@candidate``. ``int8``: the quantisation recipe (default
    :data:`~training.export.DEFAULT_INT8`; its ``qat_epochs`` fine-tunes quantisation-aware on the
    calibration windows first, :mod:`training.qat`)."""
    from shared_features import DEFAULT, log_mel
    from training.data import from_audio
    from training.export import calibration_windows, check_features, export_edge_formats

    thresholds = thresholds or PublishThresholds()
    int8 = int8 or DEFAULT_INT8
    config = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_sha256": file_sha(Path(checkpoint)),
        "data_dir": str(Path(data_dir).resolve()),
        "formats": list(formats),
        "required": list(required),
        "name": name,
        "version": version,
        "thresholds": asdict(thresholds),
        # qat_epochs only when used: an export without QAT reuses its earlier results
        "int8": {
            k: v
            for k, v in {**asdict(int8), "keep_float": list(int8.keep_float)}.items()
            if k != "qat_epochs" or v
        },
        "seed": seed,
        "check_windows": check_windows,
    }
    if reuse:
        done = load_result(EdgeExport, out, "export_edge_packages", config)
        if done is not None and (done.chosen / "package.json").exists():
            return done
    version = version or time.strftime("%Y%m%d%H%M%S", time.gmtime())
    with step_run("export_edge_packages", out, config, tracking, "silencio-edge", "edge-export") as tracker:
        data = from_audio(Path(data_dir), DEFAULT, seed=seed, soundscapes=False)
        calib = calibration_windows(Path(data_dir), data.train, seed)
        feats_cal = np.concatenate([log_mel(calib[i : i + 32], DEFAULT) for i in range(0, len(calib), 32)])
        feats_val, yv = check_features(data.val, check_windows, seed)
        mans, refused = export_edge_formats(
            Path(checkpoint),
            Path(out),
            parity=feats_val[:8],
            calibration=feats_cal,
            check=feats_val,
            check_targets=yv,
            name=name,
            version=version,
            formats=formats,
            required=required,
            thresholds=thresholds,
            int8=int8,
        )
        if not mans:
            raise TrainingError(f"no edge package published: {'; '.join(refused.values())}")
        tracker.log_params({"data": data.description, "version": version})
        first = next(iter(mans.values()))
        if "best_val_roc_auc" in first["metrics"]:  # the registry's promotion metric
            tracker.log_metrics({"best_val_roc_auc": float(first["metrics"]["best_val_roc_auc"])})
        for fmt, man in mans.items():
            v = man["validation"].get("vs_fp32", {})
            tracker.log_metrics({f"{fmt}_{k}": float(val) for k, val in v.items()})
            tracker.log_metrics({f"{fmt}_bytes": float(man["members"][0]["bytes"])})
            tracker.log_artifact(Path(out) / fmt, f"edge/{fmt}")
        if refused:
            tracker.set_tags({f"refused_{fmt}": why[:5000] for fmt, why in refused.items()})
        chosen_fmt = "onnx-int8" if "onnx-int8" in mans else next(iter(mans))
        reg = tracker.register(register_as, f"edge/{chosen_fmt}", alias="candidate") if register_as else None
        result = EdgeExport(
            packages={fmt: Path(out) / fmt for fmt in mans},
            refused=dict(refused),
            chosen=Path(out) / chosen_fmt,
            validation={fmt: jsonable(man["validation"]) for fmt, man in mans.items()},
            version=version,
            run_id=tracker.run_id,
            registered=registered(register_as, reg) if register_as else None,
        )
        save_result(tracker, out, "export_edge_packages", result)
    return result


# ----------------------------------------------------------------------- thresholds, gate
def fit_species_thresholds(
    scores: Mapping[str, ArrayLike],
    correct: Mapping[str, ArrayLike],
    out: Path,
    *,
    labels: LabelSpace | None = None,
    config: ThresholdConfig | None = None,
    tracking: Tracking | None = None,
) -> ThresholdResult:
    """Per-species thresholds from verdicts (the rule: :mod:`training.thresholds`):
    ``scores[code]`` the edge model's scores for ``code`` on judged detections, ``correct[code]``
    whether each was right. Writes ``out/thresholds.json`` (``{"code": threshold}``, the edge's
    format; species absent use the default) and ``out/thresholds_fit.json`` (the evidence)."""
    config = config or ThresholdConfig()
    digest = hashlib.sha256()
    for code in sorted(scores):
        digest.update(code.encode())
        digest.update(np.asarray(scores[code], np.float64).tobytes())
        digest.update(np.asarray(correct[code], bool).tobytes())
    n = int(sum(np.asarray(v).size for v in scores.values()))
    cfg = {
        "threshold_config": asdict(config),
        "verdicts_sha256": digest.hexdigest(),
        "n_verdicts": n,
        "labels_sha256": labels.digest() if labels else None,
    }
    with step_run("fit_species_thresholds", out, cfg, tracking, "silencio-loop", "thresholds") as tracker:
        fit = fit_thresholds(scores, correct, config, known=set(labels.codes) if labels else None)
        path, fit_path = Path(out) / "thresholds.json", Path(out) / "thresholds_fit.json"
        path.write_text(json.dumps(fit.thresholds, indent=2, sort_keys=True))
        fit_path.write_text(fit.to_json())
        tracker.log_artifact(path)
        tracker.log_artifact(fit_path)
        tracker.log_metrics(
            {
                "species_judged": float(len(fit.species)),
                "species_changed": float(len(fit.thresholds)),
                "verdicts": float(n),
            }
        )
        result = ThresholdResult(fit.thresholds, path, fit_path, len(fit.species), n, tracker.run_id)
        save_result(tracker, out, "fit_species_thresholds", result)
    return result


def gate(
    candidate: EdgeModel,
    production: EdgeModel | None,
    heldout: HeldOutSet,
    feedback: FeedbackSet,
    out: Path,
    *,
    rule: GateRule | None = None,
    registry: Registered | None = None,
    tracking: Tracking | None = None,
    threads: int = 1,
) -> GateDecision:
    """Candidate vs production (:mod:`training.gate`): promote only when the held-out macro
    ROC-AUC drops by ≤ ``rule.max_heldout_drop`` and the candidate repeats fewer flagged errors;
    otherwise a refusal with typed reasons. On promotion — and only then — ``registry``'s version
    becomes ``@production``. Writes ``out/gate.json``."""
    rule = rule or GateRule()
    config = {
        "candidate": jsonable(candidate),
        "candidate_sha256": file_sha(Path(candidate.package) / "package.json"),
        "production": jsonable(production) if production else None,
        "heldout": {
            "name": heldout.name,
            "windows": len(heldout.windows),
            "labels_sha256": heldout.labels_sha256,
        },
        "feedback": {"name": feedback.name, "clips": len(feedback.clips)},
        "rule": asdict(rule),
        "registry": asdict(registry) if registry else None,
    }
    with step_run("gate", out, config, tracking, "silencio-loop", "gate") as tracker:
        cand = evaluate_model(candidate, heldout, feedback, threads)
        refusals: tuple[GateRefusal, ...]
        prod = None
        bad_labels = labels_refusal(candidate.package, production.package if production else None)
        if bad_labels is not None:
            refusals = (bad_labels,)
        else:
            prod = evaluate_model(production, heldout, feedback, threads) if production else None
            refusals = decide(cand, prod, rule)
        promoted = not refusals
        moved = None
        if promoted and registry is not None:
            from training.tracking import set_alias

            set_alias(registry.name, registry.version, "production", force=True)
            moved = f"{registry.name}@production → v{registry.version}"
        decision = GateDecision(
            promoted, refusals, cand, prod, heldout.name, feedback.name, rule, tracker.run_id, moved
        )
        metrics = {f"candidate_{k}": float(v) for k, v in asdict(cand).items()}
        if prod is not None:
            metrics.update({f"production_{k}": float(v) for k, v in asdict(prod).items()})
        tracker.log_metrics({**metrics, "promoted": float(promoted)})
        tracker.set_tags(
            {
                "decision": "promoted" if promoted else "refused",
                "refusals": ",".join(r.kind.value for r in refusals),
            }
        )
        path = Path(out) / "gate.json"
        path.write_text(json.dumps(jsonable(decision.to_dict()), indent=2, sort_keys=True))
        tracker.log_artifact(path)
        save_result(tracker, out, "gate", decision.to_dict())
    log.info("gate: %s", decision.reason)
    return decision


# ------------------------------------------------------------------------------ release
def make_release(
    package: Path,
    out_root: Path,
    *,
    thresholds: Mapping[str, float] | None = None,
    default_threshold: float = 0.5,
    threshold_fit: Path | None = None,
    decision: GateDecision | None = None,
    name: str | None = None,
    version: str | None = None,
    source_runs: Mapping[str, str | None] | None = None,
    tracking: Tracking | None = None,
    loop_report: str | None = None,
) -> Release:
    """The edge release of ``package`` with per-species ``thresholds`` (format and manifest:
    :mod:`training.release`). With a gate ``decision``, only a promoted candidate is released
    (:class:`~training.release.ReleaseError` otherwise); ``None`` is a release without a gate (a
    first release, or an operator's own choice), and the manifest says so. ``loop_report``: the
    closed loop's report (a path relative to ``$SILENCIO_HOME`` or absolute) that the console
    shows with the release."""
    if decision is not None and not decision.promoted:
        raise ReleaseError(f"not released: the gate {decision.reason}")
    thresholds = dict(thresholds or {})
    fit_info = json.loads(Path(threshold_fit).read_text()) if threshold_fit else None
    config = {
        "package": str(Path(package).resolve()),
        "package_sha256": file_sha(Path(package) / "package.json"),
        "thresholds": thresholds,
        "default_threshold": default_threshold,
        "threshold_fit": str(threshold_fit) if threshold_fit else None,
        "gate_run": decision.run_id if decision else None,
        "name": name,
        "version": version,
        "loop_report": loop_report,
    }
    out_root = Path(out_root)
    from shared_features.package import load_package

    pkg = load_package(package, verify=False)
    record = out_root / f"{name or pkg.name}-{version or pkg.version}.run"  # step.json, result.json
    with step_run("make_release", record, config, tracking, "silencio-loop", "release") as tracker:
        files = write_release(
            Path(package),
            out_root,
            thresholds=thresholds,
            default_threshold=default_threshold,
            name=name,
            version=version,
            extra={
                "thresholds_fit": {"n_species": len(thresholds), "fit": fit_info},
                "gate": jsonable(decision.to_dict()) if decision else {"promoted": None, "reason": "no gate"},
                "source_runs": {k: v for k, v in (source_runs or {}).items() if v},
                **({"loop_report": loop_report} if loop_report else {}),
            },
        )
        tracker.log_artifact(files.directory / "release.json", "release")
        tracker.log_artifact(files.archive, "release")
        tracker.log_params({"release_sha256": files.archive_sha256})
        m = files.manifest
        result = Release(
            directory=files.directory,
            archive=files.archive,
            sha256=files.archive_sha256,
            name=str(m["name"]),
            version=str(m["version"]),
            labels_sha256=str(m["labels_sha256"]),
            thresholds=thresholds,
            run_id=tracker.run_id,
        )
        save_result(tracker, record, "make_release", result)
    return result


#: What a refusal looks like to a caller that only wants the kinds (the loop's report).
REFUSAL_KINDS = tuple(k.value for k in RefusalKind)
