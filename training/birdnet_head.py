"""A trained head over BirdNET v2.4 embeddings (the agile-modelling approach of perch-hoplite):
BirdNET, frozen, turns each 5 s window into a 1024-d embedding; a linear layer trained here maps it
to all species of the label space — including the frogs, insects and mammals BirdNET does not know.

The head is small (1024 × n_species) and saved as ``.npz`` with the label space, the BirdNET
version and the standardisation of the embeddings. Other embedding models (Google Perch, when a
user has its files) plug in through :class:`EmbeddingModel`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from shared_features import DEFAULT, FeatureConfig, LabelSpace
from shared_features.birdnet import EmbeddingHead
from training.data import ExtraClips
from training.errors import TrainingError
from training.metrics import birdclef_roc_auc
from training.tracking import Tracker


class EmbeddingModel(Protocol):
    """What a pretrained embedding member provides (BirdNET today; Perch when installed)."""

    name: str

    def predict_windows(self, windows: np.ndarray, cfg: FeatureConfig = ..., batch: int = ...) -> object: ...


def embed(
    model: object,
    windows: np.ndarray,
    cfg: FeatureConfig = DEFAULT,
    batch: int = 8,
    *,
    desc: str | None = None,
    chunk: int = 8,
) -> np.ndarray:
    """``[n, window_samples]`` → ``[n, 1024]`` float32 embeddings; with ``desc``, a progress bar
    (the windows go through the model ``chunk`` at a time; each window's embedding is its own)."""
    from tqdm import tqdm

    parts = []
    for i in tqdm(
        range(0, len(windows), chunk), desc=desc, disable=desc is None, unit="chunk", mininterval=1.0
    ):
        out = model.predict_windows(windows[i : i + chunk], cfg, batch)  # type: ignore[attr-defined]
        parts.append(np.asarray(out.embeddings, np.float32))
    return np.concatenate(parts) if parts else np.zeros((0, 1024), np.float32)


def fit_head(
    emb: np.ndarray,
    targets: np.ndarray,
    labels: LabelSpace,
    *,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    epochs: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-3,
    seed: int = 0,
    init: EmbeddingHead | None = None,
) -> tuple[EmbeddingHead, dict[str, float]]:
    """Full-batch AdamW logistic regression with early stopping on the validation macro ROC-AUC.
    ``init``: continue from that head (its weights *and* its embedding standardisation, so the
    weights keep their meaning); its label space must be ``labels``."""
    if emb.shape[0] != targets.shape[0] or targets.shape[1] != len(labels):
        raise TrainingError(
            f"embeddings {emb.shape} and targets {targets.shape} do not match {len(labels)} species"
        )
    torch.manual_seed(seed)
    if init is not None:
        if init.labels != labels or init.weight.shape != (emb.shape[1], len(labels)):
            raise TrainingError("the head to continue from has another label space or embedding size")
        mean, std = np.asarray(init.mean, np.float32), np.asarray(init.std, np.float32)
    else:
        mean, std = emb.mean(axis=0), emb.std(axis=0) + 1e-6
    x = torch.from_numpy((emb - mean) / std).float()
    y = torch.from_numpy(np.asarray(targets, np.float32))
    lin = torch.nn.Linear(x.shape[1], y.shape[1])
    if init is not None:
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.asarray(init.weight, np.float32).T))
            lin.bias.copy_(torch.from_numpy(np.asarray(init.bias, np.float32)))
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, history = -1.0, None, {}
    for epoch in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(lin(x), y)
        loss.backward()
        opt.step()
        if val is not None and (epoch % 10 == 9 or epoch == epochs - 1):
            head = _head(lin, labels, mean, std)
            score = birdclef_roc_auc(val[1] >= 0.999, head.predict(val[0]))
            if score > best:
                best, best_state = score, {k: v.clone() for k, v in lin.state_dict().items()}
                history = {
                    "val_roc_auc": score,
                    "epoch": float(epoch + 1),
                    "train_loss": float(loss.detach()),
                }
    if best_state is not None:
        lin.load_state_dict(best_state)
    return _head(lin, labels, mean, std), history


def _head(lin: torch.nn.Linear, labels: LabelSpace, mean: np.ndarray, std: np.ndarray) -> EmbeddingHead:
    return EmbeddingHead(
        labels,
        lin.weight.detach().numpy().T.copy(),
        lin.bias.detach().numpy().copy(),
        mean.astype(np.float32),
        std.astype(np.float32),
    )


def train_birdnet_head(
    data_dir: Path,
    out_dir: Path,
    *,
    seed: int = 0,
    epochs: int = 400,
    tracker: Tracker | None = None,
    embedder: object | None = None,
    progress: bool = True,
    init_from: Path | None = None,
    extra: ExtraClips | None = None,
) -> dict[str, object]:
    """Embed the dataset's train / validation windows (and labelled soundscapes) with BirdNET, fit
    the head (early stopping on validation; from ``init_from``'s head when given; ``extra`` clips'
    windows added to the training windows), save ``head.npz`` and, with soundscape truth, a
    report."""
    from shared_features.birdnet import BirdNET
    from training.data import from_audio, soundscape_waveforms, with_extra
    from training.dataset import BirdCLEFDataset, write_solution_csv
    from training.report import write_report
    from training.tracking import NullTracker

    tracker = tracker or NullTracker()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = with_extra(from_audio(data_dir, DEFAULT, seed=seed, soundscapes=False), extra)
    bn = embedder if embedder is not None else BirdNET(data.labels, num_threads=2)  # or Perch

    def waves(ds: object) -> np.ndarray:
        return np.stack([ds[i][0].numpy() for i in range(len(ds))])  # type: ignore[index, arg-type]

    tag = "birdnet" if embedder is None else str(getattr(bn, "name", "embeddings"))
    x_tr = embed(bn, waves(data.train), desc=f"{tag} train windows" if progress else None)
    x_va = embed(bn, waves(data.val), desc=f"{tag} validation windows" if progress else None)
    head, hist = fit_head(
        x_tr,
        data.train.target_matrix(),
        data.labels,
        val=(x_va, data.val.target_matrix()),
        epochs=epochs,
        seed=seed,
        init=EmbeddingHead.load(Path(init_from)) if init_from is not None else None,
    )
    head.embedder = str(getattr(bn, "name", head.embedder))
    head.save(out_dir / "head.npz")
    tracker.log_params(
        {
            "member": "birdnet_head",
            "embedder": head.embedder,
            "data": data.description,
            "dataset_fingerprint": data.dataset_fingerprint,
            "epochs": epochs,
            "init_from": str(init_from or ""),
        }
    )
    tracker.log_metrics({"best_val_roc_auc": hist.get("val_roc_auc", float("nan"))})
    result: dict[str, object] = {"head": str(out_dir / "head.npz"), "val": hist}
    truth = Path(data_dir) / "soundscape_solution.csv"
    if truth.exists():
        want, waves = soundscape_waveforms(BirdCLEFDataset.load(data_dir), truth)
        probs = head.predict(embed(bn, waves, desc=f"{tag} soundscape windows" if progress else None))
        pred = out_dir / "report" / "soundscape_predictions.csv"
        write_solution_csv(pred, want, probs, data.labels)
        rep = write_report(
            pred,
            truth,
            out_dir / "report",
            data_name=f"held-out soundscapes {truth} (never trained or early-stopped on)",
            model_name="linear head on BirdNET v2.4 embeddings",
        )
        result["soundscape"] = {"macro_roc_auc": rep.macro_roc_auc, "macro_ap": rep.macro_ap}
        tracker.log_metrics(
            {"soundscape_macro_roc_auc": rep.macro_roc_auc, "soundscape_macro_ap": rep.macro_ap}
        )
        tracker.log_artifact(out_dir / "report", "report")
    tracker.log_artifact(out_dir / "head.npz", "model")
    return result
