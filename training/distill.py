"""Pseudo-labels on unlabelled soundscapes and the distilled edge student.

**Pseudo-labels** (the self-training of the top BirdCLEF 2025 solutions): the teacher — the
ensemble package — scores every 5 s window of the soundscapes that have no published truth. A
window is kept when the teacher is confident: its top score is ≥ ``keep_threshold`` (something
calls) or every score is < ``empty_threshold`` (nothing does). Kept windows are mixed into training
with the teacher's soft scores as targets. With ``rounds`` > 1 the next round's teacher is the mean
of the ensemble and the student just trained, which re-scores the soundscapes.

**Distillation**: the student (``ModelConfig("student")``, a small timm CNN) is trained on the
labelled clip windows with targets ``alpha·truth + (1 − alpha)·teacher`` plus the kept pseudo-labelled
windows, with the usual loop (augmentations, early stopping on the *validation* split's true
labels). Held-out labelled soundscapes are scored once, at the end, for the report.

Teacher scores are cached next to the run (keyed by the package's member hashes and the windows),
so a second run does not re-score. Synthetic datasets keep the truth of their unlabelled
soundscapes under ``hidden_truth/``; it is read only to report pseudo-label precision, never to
train.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from shared_features import DEFAULT, FeatureConfig, count_windows, frame_windows, load_audio
from shared_features.package import ModelPackage, load_package
from training.errors import TrainingError
from training.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PseudoConfig:
    keep_threshold: float = 0.5
    empty_threshold: float = 0.05
    rounds: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.empty_threshold <= self.keep_threshold <= 1:
            raise TrainingError("need 0 < empty_threshold ≤ keep_threshold ≤ 1")
        if self.rounds < 1:
            raise TrainingError(f"rounds must be ≥ 1, got {self.rounds}")


@dataclass(frozen=True)
class DistillConfig:
    alpha: float = 0.5  # weight of the true labels in the clip windows' targets
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)


class FileWindows(Dataset):  # type: ignore[type-arg]
    """The 5 s windows of whole recordings (unlabelled soundscapes): ``[window_samples]`` float32,
    decoded lazily, a few files kept in memory."""

    def __init__(self, paths: list[Path], cfg: FeatureConfig = DEFAULT, keep_files: int = 8) -> None:
        from shared_features import audio_info

        self.cfg = cfg
        self.items: list[tuple[Path, int]] = []
        for p in paths:
            n = round(audio_info(p).duration * cfg.sample_rate)
            self.items += [(p, w) for w in range(count_windows(n, cfg))]
        self._lru: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._keep = keep_files

    def __len__(self) -> int:
        return len(self.items)

    def window(self, k: int) -> np.ndarray:
        p, w = self.items[k]
        if p not in self._lru:
            self._lru[p] = frame_windows(load_audio(p, self.cfg), self.cfg)[0]
            while len(self._lru) > self._keep:
                self._lru.popitem(last=False)
        self._lru.move_to_end(p)
        wins = self._lru[p]
        return wins[min(w, len(wins) - 1)]

    def row_id(self, k: int) -> str:
        p, w = self.items[k]
        return f"{p.stem}_{int((w + 1) * self.cfg.window_seconds)}"

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.window(k)), torch.zeros(0)


class TargetWindows(Dataset):  # type: ignore[type-arg]
    """Windows of ``base`` (indices ``index``) with the given ``[n, C]`` soft targets."""

    def __init__(self, base: Any, index: np.ndarray, targets: np.ndarray) -> None:
        if len(index) != len(targets):
            raise TrainingError(f"{len(index)} windows but {len(targets)} targets")
        self.base, self.index, self.targets = base, np.asarray(index), np.asarray(targets, np.float32)

    def __len__(self) -> int:
        return len(self.index)

    def target_matrix(self) -> np.ndarray:
        return self.targets

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.base[int(self.index[k])][0]
        return x, torch.from_numpy(self.targets[k])


def unlabelled_soundscapes(data_dir: Path) -> list[Path]:
    """Soundscapes of the dataset that have no row in ``soundscape_solution.csv``."""
    from training.dataset import BirdCLEFDataset, read_solution_csv

    ds = BirdCLEFDataset.load(data_dir)
    truth = Path(data_dir) / "soundscape_solution.csv"
    labelled: set[str] = set()
    if truth.exists():
        ids, _, _ = read_solution_csv(truth, ds.labels)
        labelled = {r.rsplit("_", 1)[0] for r in ids}
    return [p for p in ds.soundscapes() if p.stem not in labelled]


def _package_key(pkg: ModelPackage) -> str:
    return hashlib.sha256(
        json.dumps([(m.name, m.sha256, m.weight) for m in pkg.members], sort_keys=True).encode()
    ).hexdigest()[:16]


def teacher_scores(
    pkg: ModelPackage, windows: Any, cache: Path | None = None, batch: int = 32, desc: str = "teacher"
) -> np.ndarray:
    """``[n, C]`` ensemble scores of every window of ``windows`` (a dataset of waveforms)."""
    from tqdm import tqdm

    key = hashlib.sha256(f"{_package_key(pkg)}-{len(windows)}-{desc}".encode()).hexdigest()[:16]
    if cache is not None and (cache / f"{desc}-{key}.npy").exists():
        return np.load(cache / f"{desc}-{key}.npy")
    out = np.zeros((len(windows), len(pkg.labels)), np.float32)
    for i in tqdm(range(0, len(windows), batch), desc=desc, mininterval=1.0):
        idx = range(i, min(i + batch, len(windows)))
        x = np.stack([np.asarray(windows[k][0], np.float32) for k in idx])
        out[i : i + len(idx)] = pkg.predict(x).probs
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.save(cache / f"{desc}-{key}.npy", out)
    return out


def select_pseudo(scores: np.ndarray, cfg: PseudoConfig) -> np.ndarray:
    """Indices of the windows the teacher is confident about (something calls, or nothing)."""
    top = scores.max(axis=1)
    return np.where((top >= cfg.keep_threshold) | (top < cfg.empty_threshold))[0]


def pseudo_quality(
    rows: list[str], kept: np.ndarray, scores: np.ndarray, hidden_truth: Path, labels: Any
) -> dict[str, float]:
    """Diagnostic only (synthetic data): precision / recall of the kept pseudo-labels (score ≥ 0.5)
    against the hidden truth, which no training step reads."""
    from training.dataset import read_solution_csv

    ids, _, y = read_solution_csv(hidden_truth, labels)
    pos = {r: i for i, r in enumerate(ids)}
    have = [k for k in kept if rows[k] in pos]
    if not have:
        return {}
    t = y[[pos[rows[k]] for k in have]] >= 0.5
    p = scores[have] >= 0.5
    tp = float((t & p).sum())
    return {
        "pseudo_precision": tp / max(1.0, float(p.sum())),
        "pseudo_recall": tp / max(1.0, float(t.sum())),
        "pseudo_windows_checked": float(len(have)),
    }


def distill(
    data_dir: Path,
    teacher: Path,
    out: Path,
    *,
    mcfg: Any = None,
    tcfg: Any = None,
    dcfg: DistillConfig = DistillConfig(),
    tracker: Tracker | None = None,
    device: str | None = None,
    progress: bool = True,
    register: bool = True,
    init_from: Path | None = None,
) -> dict[str, Any]:
    """Train the student from ``teacher`` (an ensemble package) on ``data_dir``; returns the
    figures and the checkpoint (``out/round<k>/model.pt`` of the last round). With ``register``,
    the last round's model becomes ``silencio-student@candidate``; with ``init_from`` (a student
    checkpoint, e.g. production's) every round continues from it instead of from scratch."""
    from training.data import DataSource
    from training.loop import TrainConfig, fit, predict, select_training_data
    from training.models.checkpoint import load_checkpoint
    from training.models.config import member_config

    tracker = tracker or NullTracker()
    mcfg = mcfg or member_config("student")
    tcfg = tcfg or TrainConfig()
    out = Path(out)
    pkg = load_package(teacher, threads=max(1, torch.get_num_threads()))
    data = select_training_data(DataSource(data_dir=Path(data_dir)), mcfg, tcfg)
    if pkg.labels != data.labels:
        raise TrainingError(f"{teacher}: the teacher's label space differs from {data_dir}'s")
    cache = out / "teacher_cache"
    t_train = teacher_scores(pkg, data.train, cache, desc="teacher-clips")
    y_train = np.asarray(data.train.target_matrix(), np.float32)
    clip_targets = dcfg.alpha * y_train + (1 - dcfg.alpha) * t_train
    clips = TargetWindows(data.train, np.arange(len(data.train)), clip_targets)
    unl = FileWindows(unlabelled_soundscapes(data_dir))
    rows = [unl.row_id(k) for k in range(len(unl))]
    t_unl = teacher_scores(pkg, unl, cache, desc="teacher-soundscapes") if len(unl) else None
    hidden = Path(data_dir) / "hidden_truth" / "unlabelled_solution.csv"
    tracker.log_params(
        {
            "member": "student",
            "teacher": f"{pkg.name} {pkg.version}",
            "distill": json.dumps(asdict(dcfg)),
            "unlabelled_windows": len(unl),
            "data": data.description,
        }
    )
    figures: dict[str, Any] = {"teacher": pkg.describe(), "rounds": []}
    student_scores: np.ndarray | None = None
    result = None
    for r in range(1, dcfg.pseudo.rounds + 1):
        parts: list[Dataset] = [clips]  # type: ignore[type-arg]
        info: dict[str, Any] = {"round": r, "clip_windows": len(clips)}
        if t_unl is not None:
            scores = t_unl if student_scores is None else 0.5 * (t_unl + student_scores)
            kept = select_pseudo(scores, dcfg.pseudo)
            info.update(pseudo_windows=int(len(kept)), unlabelled_windows=len(unl))
            if hidden.exists():
                info.update(pseudo_quality(rows, kept, scores, hidden, pkg.labels))
            if len(kept):
                parts.append(TargetWindows(unl, kept, scores[kept]))
        log.info("distillation round %d: %s", r, info)
        rd = dataclasses.replace(data, train=ConcatDataset(parts))
        result = fit(
            mcfg,
            tcfg,
            rd,
            out / f"round{r}",
            tracker=tracker,
            device=device,
            init_from=init_from,
            progress=progress,
            register=register and r == dcfg.pseudo.rounds,
        )
        info.update(best_val_roc_auc=result.best_val_roc_auc, soundscape=result.soundscape)
        figures["rounds"].append(info)
        tracker.log_metrics(
            {k: float(v) for k, v in info.items() if isinstance(v, (int, float)) and k != "round"}, step=r
        )
        if r < dcfg.pseudo.rounds and len(unl):
            model, _, _ = load_checkpoint(result.checkpoint)
            feats = np.stack([_features(unl.window(k)) for k in range(len(unl))])
            student_scores = predict(model, feats, torch.device("cpu"))
    assert result is not None
    figures["checkpoint"] = str(result.checkpoint)
    figures["run_id"] = result.run_id
    (out / "distill.json").write_text(json.dumps(figures, indent=2, default=str))
    return figures


def _features(window: np.ndarray) -> np.ndarray:
    from shared_features import log_mel

    return log_mel(window[None], DEFAULT)[0]
