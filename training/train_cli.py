"""``silencio train …``: fit members (locally or on Ray), register them, list the registry."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from training.errors import TrainingError

USER_ERRORS: tuple[type[BaseException], ...] = (TrainingError,)


def register(sub: Any) -> None:
    t = sub.add_parser(
        "train",
        help="train ensemble members with MLflow tracking (locally or on Ray)",
        description="Train the ensemble members, track them in MLflow, manage registry aliases.",
    )
    g = t.add_subparsers(dest="cmd", metavar="SUBCOMMAND", required=True)

    f = g.add_parser(
        "fit", help="train one member (resnet50, efficientnet_b0, efficientnet_b0_lora, cnn14_sed)"
    )
    f.add_argument("member", help="member name: resnet50, efficientnet_b0, efficientnet_b0_lora, cnn14_sed")
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--cache", type=Path, help="feature cache from `silencio data prepare`")
    src.add_argument("--data", type=Path, help="dataset root: train straight from audio (log-mel on device)")
    f.add_argument("--config", type=Path, help="YAML file with `model:` and `train:` sections")
    f.add_argument("--out", type=Path, help="run directory (default $SILENCIO_HOME/runs/<member>/<time>)")
    f.add_argument("--epochs", type=int, help="maximum epochs")
    f.add_argument("--batch-size", type=int, help="batch size")
    f.add_argument("--lr", type=float, help="peak learning rate")
    f.add_argument("--loss", choices=["bce", "focal"], help="loss function")
    f.add_argument("--max-minutes", type=float, help="stop after the epoch that exceeds this budget")
    f.add_argument("--patience", type=int, help="early-stopping patience (epochs)")
    f.add_argument("--timm-name", help="override the timm architecture (e.g. a tiny one for tests)")
    f.add_argument("--downsample", type=int, help="average-pool the log-mel image by this factor")
    f.add_argument("--base", help="base checkpoint for efficientnet (ImageNet state dict or ours)")
    f.add_argument("--lora-rank", type=int, help="LoRA rank (efficientnet_b0)")
    f.add_argument("--sed-width", type=int, help="CNN14 base width (64 = PANNs)")
    f.add_argument("--panns", help="PANNs CNN14 checkpoint to start the SED from")
    f.add_argument("--init-from", help="continue from a model: checkpoint path or models:/name@alias")
    f.add_argument(
        "--subset",
        choices=["all", "initial", "new"],
        default="all",
        help="train on the whole data or one part of the time-ordered split",
    )
    f.add_argument("--merge", action="store_true", help="fold LoRA adapters into the weights after training")
    f.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    f.add_argument("--seed", type=int, help="random seed")
    f.add_argument("--no-mlflow", action="store_true", help="do not track in MLflow")
    f.add_argument("--experiment", default="silencio-members", help="MLflow experiment name")
    f.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    f.add_argument("--ray", action="store_true", help="run under Ray Train (TorchTrainer, DDP)")
    f.add_argument("--workers", type=int, default=2, help="Ray workers")
    f.add_argument("--gpu", action="store_true", help="one GPU per Ray worker")
    f.add_argument("--fsdp", action="store_true", help="FSDP instead of DDP under Ray")
    f.add_argument("--max-failures", type=int, default=2, help="Ray restarts after a worker failure")
    f.set_defaults(func=cmd_fit)

    r = g.add_parser(
        "register", help="point a registry alias (candidate/staging/production) at a run's model"
    )
    r.add_argument("run", help="MLflow run id")
    r.add_argument(
        "--alias", required=True, choices=["candidate", "staging", "production"], help="alias to set"
    )
    r.add_argument("--name", help="registered model name (default: silencio-<member of the run>)")
    r.add_argument("--force", action="store_true", help="promote to production even if worse")
    r.set_defaults(func=cmd_register)

    ls = g.add_parser("list", help="registered models, versions, aliases and validation metrics")
    ls.set_defaults(func=cmd_list)

    bh = g.add_parser("birdnet-head", help="train a linear head on BirdNET v2.4 embeddings over all species")
    bh.add_argument("--data", type=Path, required=True, help="dataset root (BirdCLEF layout)")
    bh.add_argument(
        "--out", type=Path, help="output directory (default $SILENCIO_HOME/runs/birdnet_head/<time>)"
    )
    bh.add_argument("--epochs", type=int, default=400, help="full-batch optimisation steps")
    bh.add_argument(
        "--embedder", choices=["birdnet", "perch"], default="birdnet", help="the pretrained embedding model"
    )
    bh.add_argument("--perch-model", type=Path, help="your Perch TFLite file (with --embedder perch)")
    bh.add_argument("--perch-classes", type=Path, help="its class list, one eBird code per line")
    bh.add_argument("--seed", type=int, default=0, help="split and initialisation seed")
    bh.add_argument("--init-from", type=Path, help="continue from this head.npz (e.g. production's)")
    bh.add_argument("--no-mlflow", action="store_true", help="do not track in MLflow")
    bh.add_argument("--experiment", default="silencio-members", help="MLflow experiment name")
    bh.set_defaults(func=cmd_birdnet_head)

    e = g.add_parser(
        "ensemble",
        help="bundle members + BirdNET into one ensemble package, weights fitted on validation",
    )
    e.add_argument("--data", type=Path, required=True, help="dataset root (BirdCLEF layout)")
    e.add_argument("--member", type=Path, action="append", default=[], help="member checkpoint (repeat)")
    e.add_argument("--birdnet-head", type=Path, help="head.npz from `silencio train birdnet-head`")
    e.add_argument("--no-birdnet", action="store_true", help="leave BirdNET zero-shot out")
    e.add_argument(
        "--out", type=Path, help="package directory (default $SILENCIO_HOME/packages/ensemble-<time>)"
    )
    e.add_argument("--name", default="silencio-ensemble", help="package name")
    e.add_argument("--seed", type=int, default=0, help="split seed (must be the members' seed)")
    e.add_argument("--no-mlflow", action="store_true", help="do not track in MLflow")
    e.add_argument("--experiment", default="silencio-ensemble", help="MLflow experiment name")
    e.set_defaults(func=cmd_ensemble)

    d = g.add_parser(
        "distill", help="train the edge student from an ensemble package (+ pseudo-labelled soundscapes)"
    )
    d.add_argument("--data", type=Path, required=True, help="dataset root (BirdCLEF layout)")
    d.add_argument("--teacher", type=Path, required=True, help="ensemble package directory")
    d.add_argument("--out", type=Path, help="run directory (default $SILENCIO_HOME/runs/student/<time>)")
    d.add_argument("--timm-name", help="student architecture (default mobilenetv3_small_100)")
    d.add_argument("--downsample", type=int, help="average-pool the log-mel image by this factor")
    d.add_argument("--epochs", type=int, default=20, help="maximum epochs per round")
    d.add_argument("--max-minutes", type=float, help="time budget per round")
    d.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    d.add_argument("--patience", type=int, default=8, help="early-stopping patience (epochs)")
    d.add_argument("--alpha", type=float, default=0.5, help="weight of true labels vs teacher on clips")
    d.add_argument("--rounds", type=int, default=1, help="pseudo-labelling rounds")
    d.add_argument("--keep-threshold", type=float, default=0.5, help="keep windows whose top score ≥ this")
    d.add_argument("--empty-threshold", type=float, default=0.05, help="… or whose every score < this")
    d.add_argument("--seed", type=int, default=0, help="split and training seed")
    d.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    d.add_argument("--init-from", help="continue from a student: checkpoint path or models:/name@alias")
    d.add_argument("--no-mlflow", action="store_true", help="do not track in MLflow")
    d.add_argument("--experiment", default="silencio-student", help="MLflow experiment name")
    d.set_defaults(func=cmd_distill)


def _load_yaml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or set(data) - {"model", "train"}:
        raise TrainingError(f"{path}: expected a mapping with `model:` and/or `train:` sections")
    return data


def resolve_configs(args: argparse.Namespace) -> tuple[Any, Any]:
    from training.loop import TrainConfig
    from training.models import member_config

    y = _load_yaml(args.config)
    member = args.member
    lora = args.lora_rank  # None keeps the member's default rank
    mcfg = member_config(
        member,
        **{
            **y.get("model", {}),
            **{
                k: v
                for k, v in {
                    "timm_name": args.timm_name,
                    "input_downsample": args.downsample,
                    "base_checkpoint": args.base,
                    "lora_rank": lora,
                    "sed_width": args.sed_width,
                    "panns_checkpoint": args.panns,
                    "feature_preset": "panns" if args.panns else None,
                }.items()
                if v is not None
            },
        },
    )
    tr = {
        **y.get("train", {}),
        **{
            k: v
            for k, v in {
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "loss": args.loss,
                "max_minutes": args.max_minutes,
                "patience": args.patience,
                "seed": args.seed,
            }.items()
            if v is not None
        },
    }
    return mcfg, TrainConfig(**tr)


def _tracking(args: argparse.Namespace, run_name: str | None = None, system_metrics: bool = False) -> Any:
    from training.pipeline import Tracking

    return Tracking(
        experiment=args.experiment, run_name=run_name, track=not args.no_mlflow, system_metrics=system_metrics
    )


def cmd_fit(args: argparse.Namespace) -> int:
    from shared_features.paths import home
    from training.pipeline import DataSource, RayOptions, train_member
    from training.tracking import resolve_model_uri

    mcfg, tcfg = resolve_configs(args)
    out = args.out or home() / "runs" / mcfg.name / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    source = DataSource(
        cache=args.cache,
        data_dir=args.data,
        subset=args.subset,
        int16=bool(args.data)
        and not args.ray
        and _on_gpu(args.device),  # 16-bit PCM: half the host→GPU traffic
    )
    res = train_member(
        source,
        mcfg,
        tcfg,
        out,
        tracking=_tracking(args, mcfg.name, system_metrics=True),  # CPU/GPU use beside the curves
        device=args.device,
        init_from=resolve_model_uri(args.init_from) if args.init_from else None,
        resume=args.resume,
        merge_lora=args.merge,
        ray=RayOptions(args.workers, args.gpu, "fsdp" if args.fsdp else "ddp", args.max_failures)
        if args.ray
        else None,
    )
    if res.retrain_comparison:
        print("old vs new model on both time-ordered splits (validation windows):")
        for k, v in res.retrain_comparison.items():
            print(f"  {k:40s} {v:.4f}")
    if res.merged_checkpoint:
        print(f"merged LoRA adapters → {res.merged_checkpoint}")
    print(
        f"{mcfg.name}: best validation macro ROC-AUC {res.best_val_roc_auc:.4f} at epoch {res.best_epoch} "
        f"({res.stopped}); checkpoint {res.checkpoint}"
    )
    if res.soundscape:
        print(
            f"held-out soundscapes: macro ROC-AUC {res.soundscape['macro_roc_auc']:.4f}, "
            f"macro AP {res.soundscape['macro_ap']:.4f}; report {res.report}"
        )
    if res.run_id:
        reg = (
            f" (registered as {res.registered.name} v{res.registered.version} @candidate)"
            if res.registered
            else ""
        )
        print(f"MLflow run {res.run_id}{reg}")
    return 0


def cmd_birdnet_head(args: argparse.Namespace) -> int:
    from shared_features.paths import home
    from training.pipeline import train_embedding_head

    out = args.out or home() / "runs" / "birdnet_head" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    emb = None
    if args.embedder == "perch":
        from shared_features import LabelSpace
        from shared_features.perch import Perch

        if not args.perch_model or not args.perch_classes:
            raise TrainingError(
                "--embedder perch needs --perch-model and --perch-classes (Perch is not downloaded)"
            )
        emb = Perch(
            args.perch_model, args.perch_classes, LabelSpace.from_taxonomy_csv(args.data / "taxonomy.csv")
        )
    res = train_embedding_head(
        args.data,
        out,
        seed=args.seed,
        epochs=args.epochs,
        embedder=emb,
        tracking=_tracking(args, "birdnet_head"),
    )
    print(f"birdnet_head: best validation macro ROC-AUC {res.val_roc_auc:.4f}; head {res.head}")
    if res.soundscape:
        s = res.soundscape
        print(f"held-out soundscapes: macro ROC-AUC {s['macro_roc_auc']:.4f}, macro AP {s['macro_ap']:.4f}")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from shared_features.paths import home
    from training.pipeline import build_ensemble_package

    out = args.out or home() / "packages" / f"ensemble-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    res = build_ensemble_package(
        args.data,
        out,
        checkpoints=args.member,
        birdnet_head=args.birdnet_head,
        birdnet=not args.no_birdnet,
        name=args.name,
        seed=args.seed,
        tracking=_tracking(args, "ensemble"),
    )
    print(f"ensemble package {res.package}")
    print(f"  validation macro ROC-AUC {res.val_roc_auc:.4f} (weights fitted here)")
    for n, w in res.weights.items():
        print(f"  {n:22s} weight {w:.3f}  validation macro ROC-AUC {res.member_val_roc_auc[n]:.4f}")
    if res.soundscape:
        s = res.soundscape
        print(
            f"held-out soundscapes ({s['windows']} windows): ensemble macro ROC-AUC {s['macro_roc_auc']:.4f}"
        )
        for n, v in s["member_macro_roc_auc"].items():
            print(f"  {n:22s} {v:.4f}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from shared_features.paths import home
    from training.distill import DistillConfig, PseudoConfig
    from training.loop import TrainConfig
    from training.models.config import member_config
    from training.pipeline import distill_student
    from training.tracking import resolve_model_uri

    out = args.out or home() / "runs" / "student" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    mcfg = member_config("student", timm_name=args.timm_name, input_downsample=args.downsample)
    tcfg = TrainConfig(
        epochs=args.epochs, lr=args.lr, patience=args.patience, max_minutes=args.max_minutes, seed=args.seed
    )
    dcfg = DistillConfig(
        alpha=args.alpha,
        pseudo=PseudoConfig(args.keep_threshold, args.empty_threshold, args.rounds),
    )
    res = distill_student(
        args.data,
        args.teacher,
        out,
        mcfg=mcfg,
        tcfg=tcfg,
        dcfg=dcfg,
        device=args.device,
        init_from=resolve_model_uri(args.init_from) if args.init_from else None,
        tracking=_tracking(args, "student"),
    )
    for r in res.rounds:
        extra = (
            f", pseudo-labelled windows kept {r['pseudo_windows']}/{r['unlabelled_windows']}"
            if "pseudo_windows" in r
            else ""
        )
        if "pseudo_precision" in r:
            extra += f" (precision vs hidden truth {r['pseudo_precision']:.3f})"
        sc = r.get("soundscape") or {}
        print(
            f"round {r['round']}: best validation macro ROC-AUC {r['best_val_roc_auc']:.4f}{extra}"
            + (f"; held-out soundscapes {sc['macro_roc_auc']:.4f}" if sc else "")
        )
    print(f"student checkpoint {res.checkpoint}")
    return 0


def _on_gpu(device: str | None) -> bool:
    import torch

    return (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")


def cmd_register(args: argparse.Namespace) -> int:
    from training.tracking import _client, register_artifact, set_alias

    c = _client()
    run = c.get_run(args.run)
    name = args.name or f"silencio-{run.data.params.get('member', 'model')}"
    versions = [v for v in c.search_model_versions(f"name='{name}'") if v.run_id == args.run]
    version = versions[0].version if versions else register_artifact(args.run, name)
    set_alias(name, str(version), args.alias, force=args.force)
    print(f"{name} v{version} is now @{args.alias}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from training.tracking import VAL_METRIC, _client, tracking_uri

    c = _client()
    print(f"registry: {tracking_uri()}")
    for rm in c.search_registered_models():
        aliases = {v: k for k, v in (rm.aliases or {}).items()}
        for v in sorted(c.search_model_versions(f"name='{rm.name}'"), key=lambda v: int(v.version)):
            m = c.get_run(v.run_id).data.metrics.get(VAL_METRIC)
            print(
                f"  {rm.name} v{v.version} run {v.run_id} {VAL_METRIC}={m if m is None else round(m, 4)}"
                f"{' @' + aliases[v.version] if v.version in aliases else ''}"
            )
    return 0
