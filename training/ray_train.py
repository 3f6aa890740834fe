"""The same training loop under Ray Train: ``TorchTrainer`` with DDP (or FSDP), checkpoints
reported through Ray, restarts after worker failures (``max_failures``), resume from the latest
Ray checkpoint. The driver converts the best Ray checkpoint into a member checkpoint and logs the
run to MLflow. Against a cluster: ``RAY_ADDRESS=ray://head:10001`` or ``ray job submit``
(README)."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from training.data import DataSource, ExtraClips, TrainData
from training.errors import TrainingError
from training.loop import FitResult, TrainConfig
from training.models.config import ModelConfig
from training.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)


def _state_dict(model: torch.nn.Module, strategy: str) -> dict[str, Any]:
    if strategy == "fsdp":
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        cfg = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, cfg):
            return model.state_dict()
    m = model.module if hasattr(model, "module") else model
    return {k: v.detach().cpu() for k, v in m.state_dict().items()}


def ray_config(
    mcfg: ModelConfig,
    tcfg: TrainConfig,
    source: DataSource,
    *,
    strategy: str = "ddp",
    init_from: Path | None = None,
    extra: ExtraClips | None = None,
) -> dict[str, Any]:
    """The ``train_loop_config`` every Ray worker receives: plain JSON-ready data (paths absolute:
    the data and ``init_from`` must be on storage every worker reads)."""
    return {
        "model": mcfg.to_dict(),
        "train": asdict(tcfg),
        "source": source.to_dict(),
        "strategy": strategy,
        "init_from": str(Path(init_from).resolve()) if init_from else None,
        "extra": extra.to_dict() if extra is not None else None,
    }


def worker_data(config: dict[str, Any], *, soundscapes: bool = False) -> TrainData:
    """A worker's (and the driver's) windows: :func:`training.loop.select_training_data` on the
    configs in ``config`` — the same selection as a local run of the same configs."""
    from training.loop import select_training_data

    return select_training_data(
        DataSource.from_dict(config["source"]),
        ModelConfig.from_dict(config["model"]),
        TrainConfig(**config["train"]),
        soundscapes=soundscapes,
        extra=ExtraClips.from_dict(config["extra"]) if config.get("extra") else None,
    )


def _init(config: dict[str, Any]) -> Path | None:
    return Path(config["init_from"]) if config.get("init_from") else None


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    from torch.utils.data import DataLoader

    from training.loop import make_optimizer, prepare_model, seed_everything, train_one_epoch, validate

    mcfg = ModelConfig.from_dict(config["model"])
    tcfg = TrainConfig(**config["train"])
    seed_everything(tcfg.seed, tcfg.threads or 1)
    data = worker_data(config)
    model = prepare_model(mcfg, tcfg, data, _init(config))
    model = ray.train.torch.prepare_model(model, parallel_strategy=config["strategy"])
    gen = torch.Generator().manual_seed(tcfg.seed + ray.train.get_context().get_world_rank())
    loader = DataLoader(
        data.train, batch_size=tcfg.batch_size, shuffle=True, drop_last=len(data.train) > tcfg.batch_size
    )
    loader = ray.train.torch.prepare_data_loader(loader)
    steps = max(1, len(loader) * tcfg.epochs // tcfg.grad_accum)
    opt, sched = make_optimizer(model, tcfg, steps)
    device = ray.train.torch.get_device()
    start = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", map_location=device, weights_only=False)
        (model.module if hasattr(model, "module") else model).load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = state["epoch"] + 1
    rank = ray.train.get_context().get_world_rank()
    for epoch in range(start, tcfg.epochs):
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        m = train_one_epoch(model, loader, opt, sched, tcfg, device, gen, False)
        m.update(validate(model, data.val, device, tcfg))
        m["epoch"] = epoch + 1
        sd = _state_dict(model, config["strategy"])
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                torch.save(
                    {"model": sd, "opt": opt.state_dict(), "sched": sched.state_dict(), "epoch": epoch},
                    Path(d) / "state.pt",
                )
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(m, checkpoint=checkpoint)


def fit_ray(
    mcfg: ModelConfig,
    tcfg: TrainConfig,
    source: DataSource,
    out_dir: Path,
    *,
    workers: int = 2,
    use_gpu: bool = False,
    strategy: str = "ddp",
    max_failures: int = 2,
    tracker: Tracker | None = None,
    init_from: Path | None = None,
    extra: ExtraClips | None = None,
) -> FitResult:
    """Train one member under Ray Train on ``source`` (the selection of a local run of the same
    configs); the driver logs the run to ``tracker`` (its status is the caller's: see
    :func:`training.pipeline.train_member`)."""
    try:
        import ray
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError as exc:  # pragma: no cover
        raise TrainingError("Ray Train is missing: pip install 'silencio[train]'") from exc
    if strategy not in ("ddp", "fsdp"):
        raise TrainingError(f"strategy must be ddp or fsdp, got {strategy!r}")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address)
        else:
            ray.init(
                num_cpus=max(os.cpu_count() or 1, workers + 1),
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
    config = ray_config(mcfg, tcfg, source, strategy=strategy, init_from=init_from, extra=extra)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": 1, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RunConfig(
            name=f"{mcfg.name}",
            storage_path=str(out_dir / "ray"),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="val_roc_auc", checkpoint_score_order="max"
            ),
        ),
    )
    result = trainer.fit()
    if result.error:
        raise TrainingError(f"Ray training failed: {result.error}")
    return _finish(mcfg, tcfg, result, out_dir, config, tracker or NullTracker(), workers, strategy)


def _finish(
    mcfg: ModelConfig,
    tcfg: TrainConfig,
    result: Any,
    out_dir: Path,
    config: dict[str, Any],
    tracker: Tracker,
    workers: int,
    strategy: str,
) -> FitResult:
    from training.loop import evaluate_soundscapes, prepare_model
    from training.models.checkpoint import save_checkpoint

    best_pairs = list(getattr(result, "best_checkpoints", []) or [])
    history = []
    df = getattr(result, "metrics_dataframe", None)
    if df is not None and len(df):
        history = [
            {k: float(v) for k, v in row.items() if isinstance(v, (int, float))}
            for row in df.to_dict("records")
        ]
    if best_pairs:
        ckpt, metrics = max(best_pairs, key=lambda p: p[1].get("val_roc_auc", float("-inf")))
    else:
        ckpt, metrics = result.checkpoint, dict(result.metrics or {})
    if ckpt is None:
        raise TrainingError("Ray training reported no checkpoint")
    with ckpt.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)
    data = worker_data(config, soundscapes=True)
    model = prepare_model(mcfg, tcfg, data, _init(config))  # the workers' architecture (LoRA included)
    model.load_state_dict(state["model"])
    tracker.log_params(
        {
            "member": mcfg.name,
            **{f"model.{k}": v for k, v in mcfg.to_dict().items()},
            **{f"train.{k}": v for k, v in asdict(tcfg).items()},
            "feature_fingerprint": data.feature_cfg.fingerprint(),
            "dataset_fingerprint": data.dataset_fingerprint,
            "data": data.description,
            "ray_workers": workers,
            "ray_strategy": strategy,
        }
    )
    for h in history:
        step = int(h.get("epoch", 0))
        tracker.log_metrics(
            {
                k: v
                for k, v in h.items()
                if k in ("train_loss", "val_loss", "val_roc_auc", "train_clips_per_s", "lr")
            },
            step=step,
        )
    best = float(metrics.get("val_roc_auc", float("nan")))
    tracker.log_metrics({"best_val_roc_auc": best, "best_epoch": float(metrics.get("epoch", 0))})
    path = save_checkpoint(
        out_dir / "model.pt",
        model,
        data.labels,
        run_id=tracker.run_id,
        metrics={"best_val_roc_auc": best, "epoch": metrics.get("epoch")},
    )
    res = FitResult(
        path, int(metrics.get("epoch", 0)), best, history, run_id=tracker.run_id, stopped="epochs"
    )
    if data.soundscapes is not None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        res.soundscape, res.report = evaluate_soundscapes(path, data, out_dir / "report", dev)
        tracker.log_metrics({f"soundscape_{k}": v for k, v in res.soundscape.items()})
        tracker.log_artifact(out_dir / "report", "report")
    tracker.log_artifact(path, "model")
    return res
