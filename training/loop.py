"""The training loop shared by single-process and Ray runs.

BCE or focal loss, mixup (label union), SpecAugment, weighted secondary labels, bf16 autocast on
GPU, gradient accumulation, warm-up + cosine schedule, early stopping on the validation split's
macro ROC-AUC (never on test or soundscape data), best/last checkpoints and resume, an optional
time budget. The held-out soundscapes are scored once, at the end, for the report.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.augment import WaveAugConfig, augment_waveforms
from training.data import DataSource, ExtraClips, TrainData, WindowSet, select_data
from training.errors import MetricError, TrainingError
from training.metrics import birdclef_roc_auc
from training.models.checkpoint import save_checkpoint
from training.models.config import ModelConfig
from training.models.factory import AudioClassifier, SpecAugment, add_lora, build_model
from training.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    loss: str = "bce"  # "bce" or "focal"
    focal_gamma: float = 2.0
    mixup_alpha: float = 0.4
    mixup_prob: float = 0.5
    specaugment: bool = True
    secondary_weight: float = 0.5
    grad_accum: int = 1
    warmup_epochs: float = 0.5
    patience: int = 4
    seed: int = 0
    num_workers: int = 0
    amp: str = "auto"  # "auto" (bf16 on GPU), "bf16", "off"
    max_minutes: float | None = None
    min_snr_db: float | None = None
    trainable: str = "all"  # "all", or "head" for a frozen backbone
    wave_augment: bool = True  # waveform augmentations (training from audio only): see augment.py
    threads: int | None = None  # torch intra-op threads (None: torch's default); fixed → reproducible

    def __post_init__(self) -> None:
        if self.loss not in ("bce", "focal"):
            raise TrainingError(f"loss must be bce or focal, got {self.loss!r}")
        if self.amp not in ("auto", "bf16", "off"):
            raise TrainingError(f"amp must be auto, bf16 or off, got {self.amp!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise TrainingError("epochs, batch_size and grad_accum must be ≥ 1")


def select_training_data(
    source: DataSource,
    mcfg: ModelConfig,
    tcfg: TrainConfig,
    *,
    soundscapes: bool = True,
    extra: ExtraClips | None = None,
) -> TrainData:
    """The windows a member trains and early-stops on, from its configs alone: the member's
    feature preset, ``tcfg.seed``'s split, ``tcfg.secondary_weight`` and ``tcfg.min_snr_db``.
    Local runs and every Ray worker call this, so they select identical examples. ``extra``:
    clips appended to the training part (the closed loop's judged feedback clips)."""
    from shared_features import get_preset
    from training.data import with_extra

    data = select_data(
        source,
        get_preset(mcfg.feature_preset),
        seed=tcfg.seed,
        secondary_weight=tcfg.secondary_weight,
        min_snr_db=tcfg.min_snr_db,
        soundscapes=soundscapes,
    )
    return with_extra(data, extra)


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed Python's, numpy's and torch's global generators (SpecAugment, dropout, initial
    weights) and, when given, fix torch's intra-op thread count: CPU reductions are split by
    thread, so the same seed on another thread count may differ in the last bits."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)


def seed_worker(worker_id: int) -> None:
    """``DataLoader`` ``worker_init_fn``: each worker's numpy/random from torch's per-worker seed
    (itself derived from the loader's seeded generator)."""
    import random

    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


@dataclass
class FitResult:
    checkpoint: Path
    best_epoch: int
    best_val_roc_auc: float
    history: list[dict[str, float]] = field(default_factory=list)
    soundscape: dict[str, float] | None = None
    report: Path | None = None
    run_id: str | None = None
    stopped: str = "epochs"


def loss_fn(tcfg: TrainConfig, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if tcfg.loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, y)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    pt = p * y + (1 - p) * (1 - y)
    return (ce * (1 - pt) ** tcfg.focal_gamma).mean()


def mixup(
    x: torch.Tensor, y: torch.Tensor, alpha: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature mixup (``[B, n_mels, frames]``): each example mixed convexly with a shuffled partner;
    the target is the union of both label sets."""
    lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen))).beta(alpha, alpha))
    lam = max(lam, 1 - lam)
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    return lam * x + (1 - lam) * x[perm], torch.maximum(y, y[perm])


def mix_waveforms(
    x: torch.Tensor,
    y: torch.Tensor,
    prob: float,
    gen: torch.Generator,
    gain_db: tuple[float, float] = (-12, 6),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveform mixing (``[B, samples]``): each example, with probability ``prob``, gets a shuffled
    partner *added* at a random relative gain (−12…+6 dB), as overlapping calls add up in air; the
    target is the union. Per example, so a batch holds solo calls and choruses side by side, and a
    loud partner teaches the model that a faint call beside it is still there."""
    b = x.shape[0]
    perm = torch.randperm(b, generator=gen).to(x.device)
    sel = (torch.rand(b, 1, generator=gen) < prob).to(x.device)
    db = gain_db[0] + (gain_db[1] - gain_db[0]) * torch.rand(b, 1, generator=gen)
    rms = x.pow(2).mean(dim=1, keepdim=True).sqrt() + 1e-6
    gain = (10 ** (db / 20)).to(x.device) * rms / rms[perm]
    return x + sel * gain * x[perm], torch.where(sel, torch.maximum(y, y[perm]), y)


def unwrap(model: nn.Module) -> AudioClassifier:
    m = model.module if hasattr(model, "module") else model
    assert isinstance(m, AudioClassifier)
    return m


def autocast(tcfg: TrainConfig, device: torch.device):  # type: ignore[no-untyped-def]
    use = device.type == "cuda" and tcfg.amp in ("auto", "bf16") or tcfg.amp == "bf16"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    opt: torch.optim.Optimizer,  # type: ignore[type-arg]
    sched: torch.optim.lr_scheduler.LRScheduler,
    tcfg: TrainConfig,
    device: torch.device,
    gen: torch.Generator,
    progress: bool = False,
    desc: str = "train",
) -> dict[str, float]:
    from tqdm import tqdm

    model.train()
    total, n, seen = 0.0, 0, 0
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False, mininterval=1.0)
    for step, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if x.dtype == torch.int16:  # 16-bit PCM from the loader: float on the device
            x = x.float() * (1.0 / 32768.0)
        if tcfg.wave_augment and x.dim() == 2:
            x, y = augment_waveforms(x, y, WaveAugConfig(), gen)
        if tcfg.mixup_alpha > 0 and x.dim() == 2:
            x, y = mix_waveforms(x, y, tcfg.mixup_prob, gen)
            x, y = mix_waveforms(x, y, tcfg.mixup_prob / 2, gen)  # a third source: dense choruses
        elif tcfg.mixup_alpha > 0 and float(torch.rand(1, generator=gen)) < tcfg.mixup_prob:
            x, y = mixup(x, y, tcfg.mixup_alpha, gen)
        with autocast(tcfg, device):
            logits = model(x)
        loss = loss_fn(tcfg, logits, y) / tcfg.grad_accum
        loss.backward()
        if (step + 1) % tcfg.grad_accum == 0 or step + 1 == len(loader):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        total += float(loss.detach()) * tcfg.grad_accum * x.shape[0]
        n += x.shape[0]
        seen += x.shape[0]
        bar.set_postfix(loss=f"{total / max(n, 1):.4f}")
    dt = time.perf_counter() - t0
    return {
        "train_loss": total / max(n, 1),
        "train_clips_per_s": seen / dt if dt > 0 else 0.0,
        "lr": float(opt.param_groups[0]["lr"]),
    }


@torch.no_grad()
def predict(
    model: nn.Module,
    x: np.ndarray | Dataset,
    device: torch.device,
    batch_size: int = 64,  # type: ignore[type-arg]
    tcfg: TrainConfig | None = None,
) -> np.ndarray:
    """Sigmoid probabilities ``[n, n_classes]`` of an array of features/waveforms or a dataset."""
    model.eval()
    outs = []
    if isinstance(x, np.ndarray):
        batches = (torch.from_numpy(x[i : i + batch_size]) for i in range(0, len(x), batch_size))
    else:
        batches = (b for b, _ in DataLoader(x, batch_size=batch_size, shuffle=False))
    for b in batches:
        with autocast(tcfg or TrainConfig(), device):
            outs.append(torch.sigmoid(model(b.to(device)).float()).cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def validate(model: nn.Module, ds: WindowSet, device: torch.device, tcfg: TrainConfig) -> dict[str, float]:
    probs = predict(model, ds, device, tcfg.batch_size * 2, tcfg)
    y = (ds.target_matrix() >= 0.999).astype(np.float32)  # validation scores primary labels only
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    out = {"val_loss": float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())}
    try:
        out["val_roc_auc"] = birdclef_roc_auc(y, probs)
    except MetricError:
        out["val_roc_auc"] = float("nan")
    return out


def make_optimizer(
    model: nn.Module, tcfg: TrainConfig, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    warm = max(1, int(tcfg.warmup_epochs * steps / tcfg.epochs))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        prog = (step - warm) / max(1, steps - warm)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def prepare_model(
    mcfg: ModelConfig, tcfg: TrainConfig, data: TrainData, init_from: Path | None = None
) -> AudioClassifier:
    from shared_features import get_preset

    if get_preset(mcfg.feature_preset).fingerprint() != data.feature_cfg.fingerprint():
        raise TrainingError(
            f"member {mcfg.name} uses preset {mcfg.feature_preset!r} "
            f"({get_preset(mcfg.feature_preset).fingerprint()}) but the data has "
            f"{data.feature_cfg.fingerprint()}; prepare a cache with that preset"
        )
    if init_from is not None:
        from training.models.checkpoint import load_checkpoint

        model, labels, _ = load_checkpoint(init_from)
        if labels != data.labels:
            raise TrainingError(f"{init_from}: label space differs from the data's")
        if mcfg.lora_rank and not model.mcfg.lora_rank:
            # record every LoRA setting: a reload must rebuild the very same adapters
            model.mcfg = model.mcfg.replace(
                lora_rank=mcfg.lora_rank, lora_alpha=mcfg.lora_alpha, lora_dropout=mcfg.lora_dropout
            )
            model.backbone = add_lora(model.backbone, model.mcfg)
    else:
        model = build_model(mcfg, len(data.labels))
    if tcfg.specaugment:
        model.augment = SpecAugment()
    if tcfg.trainable == "head":
        for name, p in model.backbone.named_parameters():
            p.requires_grad = any(k in name for k in ("classifier", "fc.", "att_block", "head"))
    return model


def fit(
    mcfg: ModelConfig,
    tcfg: TrainConfig,
    data: TrainData,
    out_dir: Path,
    *,
    tracker: Tracker | None = None,
    device: str | None = None,
    init_from: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    register: bool = True,
) -> FitResult:
    """Train one member; returns the best checkpoint (``out_dir/model.pt``) and its figures."""
    seed_everything(tcfg.seed, tcfg.threads)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tracker = tracker or NullTracker()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(data.train) == 0 or len(data.val) == 0:
        raise TrainingError(f"need training and validation windows, have {len(data.train)} / {len(data.val)}")
    model = prepare_model(mcfg, tcfg, data, init_from).to(dev)
    gen = torch.Generator().manual_seed(tcfg.seed)
    loader = DataLoader(
        data.train,
        batch_size=tcfg.batch_size,
        shuffle=True,
        drop_last=len(data.train) > tcfg.batch_size,
        num_workers=tcfg.num_workers,
        generator=gen,
        worker_init_fn=seed_worker,
        pin_memory=dev.type == "cuda",
        persistent_workers=tcfg.num_workers > 0,
    )
    steps = max(1, len(loader) * tcfg.epochs // tcfg.grad_accum)
    opt, sched = make_optimizer(model, tcfg, steps)
    history: list[dict[str, float]] = []
    best, best_epoch, bad, start_epoch = -1.0, -1, 0, 0
    last = out_dir / "last.pt"
    if resume and last.exists():
        state = torch.load(last, map_location=dev, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        history, best, best_epoch, bad = state["history"], state["best"], state["best_epoch"], state["bad"]
        start_epoch = state["epoch"] + 1
        log.info("resumed from %s at epoch %d", last, start_epoch)
    params = {
        "member": mcfg.name,
        **{f"model.{k}": v for k, v in mcfg.to_dict().items()},
        **{f"train.{k}": v for k, v in asdict(tcfg).items()},
        "feature_fingerprint": data.feature_cfg.fingerprint(),
        "feature_config": json.dumps(data.feature_cfg.to_dict(), sort_keys=True),
        "dataset_fingerprint": data.dataset_fingerprint,
        "data": data.description,
        "labels_sha256": data.labels.digest(),
        "n_classes": len(data.labels),
        "device": str(dev),
        "init_from": str(init_from) if init_from else "",
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    tracker.log_params(params)
    (out_dir / "config.json").write_text(json.dumps(params, indent=2, default=str))
    t_start = time.perf_counter()
    stopped = "epochs"
    for epoch in range(start_epoch, tcfg.epochs):
        m = train_one_epoch(
            model, loader, opt, sched, tcfg, dev, gen, progress, f"{mcfg.name} epoch {epoch + 1}"
        )
        m.update(validate(model, data.val, dev, tcfg))
        m["epoch"] = epoch + 1
        history.append(m)
        tracker.log_metrics(
            {k: v for k, v in m.items() if k != "epoch" and not math.isnan(v)}, step=epoch + 1
        )
        log.info(
            "%s epoch %d: loss %.4f, val ROC-AUC %.4f",
            mcfg.name,
            epoch + 1,
            m["train_loss"],
            m["val_roc_auc"],
        )
        score = m["val_roc_auc"] if not math.isnan(m["val_roc_auc"]) else -m["val_loss"]
        if score > best:
            best, best_epoch, bad = score, epoch + 1, 0
            save_checkpoint(
                out_dir / "model.pt",
                unwrap(model),
                data.labels,
                run_id=tracker.run_id,
                metrics={"best_val_roc_auc": score, "epoch": epoch + 1},
            )
        else:
            bad += 1
        torch.save(
            {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "history": history,
                "best": best,
                "best_epoch": best_epoch,
                "bad": bad,
                "epoch": epoch,
            },
            last,
        )
        if bad >= tcfg.patience:
            stopped = f"early stop: no val improvement for {bad} epochs"
            break
        if tcfg.max_minutes is not None and (time.perf_counter() - t_start) / 60 > tcfg.max_minutes:
            stopped = f"time budget of {tcfg.max_minutes} min reached"
            break
    tracker.log_metrics({"best_val_roc_auc": best, "best_epoch": best_epoch})
    tracker.set_tags({"stopped": stopped})
    result = FitResult(
        out_dir / "model.pt", best_epoch, best, history, run_id=tracker.run_id, stopped=stopped
    )
    if data.soundscapes is not None:
        result.soundscape, result.report = evaluate_soundscapes(
            out_dir / "model.pt", data, out_dir / "report", dev
        )
        tracker.log_metrics({f"soundscape_{k}": v for k, v in result.soundscape.items()})
        tracker.log_artifact(out_dir / "report", "report")
    tracker.log_artifact(out_dir / "model.pt", "model")
    tracker.log_artifact(out_dir / "config.json")
    if register:
        tracker.register(f"silencio-{mcfg.name}", "model", alias="candidate")
    return result


def evaluate_soundscapes(
    ckpt: Path, data: TrainData, out: Path, device: torch.device
) -> tuple[dict[str, float], Path]:
    """Score the held-out soundscape windows with the best checkpoint and write the report."""
    from training.dataset import write_solution_csv
    from training.models.checkpoint import load_checkpoint
    from training.report import write_report

    assert data.soundscapes is not None
    model, labels, blob = load_checkpoint(ckpt, map_location=str(device))
    probs = predict(model, data.soundscapes.features, device)
    out.mkdir(parents=True, exist_ok=True)
    pred = out / "soundscape_predictions.csv"
    write_solution_csv(pred, data.soundscapes.row_ids, probs, labels)
    rep = write_report(
        pred,
        data.soundscapes.truth_csv,
        out,
        data_name=f"held-out soundscapes {data.soundscapes.truth_csv} (never trained or early-stopped on)",
        model_name=f"{model.mcfg.name} ({ckpt}, best val epoch {blob['metrics'].get('epoch')})",
    )
    return {
        k: v for k, v in rep.as_flat_dict().items() if k in ("macro_roc_auc", "macro_ap", "top1", "top5")
    }, out / "report.md"
