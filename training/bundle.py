"""The ensemble bundle: trained members + BirdNET, with weights fitted on validation windows, as
one ``ensemble`` model package (:mod:`shared_features.package`) that the cloud serves and the
pseudo-labeller and the distiller use as teacher.

Every CNN member is exported to ONNX fp32 (parity-checked against PyTorch); the BirdNET head and
BirdNET zero-shot run through LiteRT. The weights are fitted on the *validation* split with the
package's own runtime, so the served scores are the scores the weights were fitted on. The
held-out soundscapes, when the dataset has their truth, are scored once for the report.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared_features import DEFAULT, LabelSpace, log_mel
from shared_features.package import MemberSpec, ModelPackage, load_package
from training.errors import TrainingError
from training.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)


@dataclass
class EnsembleResult:
    package: Path
    weights: dict[str, float]
    val_roc_auc: float
    member_val_roc_auc: dict[str, float]
    soundscape: dict[str, Any] = field(default_factory=dict)


def waveforms(ds: Any, index: Sequence[int]) -> np.ndarray:
    """``[len(index), window_samples]`` float32 waveforms of the windows ``index`` of a window set."""
    return np.stack([ds[i][0].numpy() for i in index]).astype(np.float32)


def windows_of(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """``[n, window_samples]`` waveforms and ``[n, C]`` targets of a whole window set (audio source)
    — in memory: for small sets; :func:`score_windows` streams."""
    if len(ds) == 0:
        raise TrainingError("no windows in this split")
    return waveforms(ds, range(len(ds))), np.asarray(ds.target_matrix(), np.float32)


def score_windows(
    pkg: ModelPackage, ds: Any, desc: str | None = None, batch: int = 256
) -> tuple[Any, np.ndarray]:
    """The package's :class:`~shared_features.package.Scores` of every window of ``ds`` and their
    ``[n, C]`` targets, decoding ``batch`` windows at a time (bounded memory: a BirdCLEF-sized
    split's audio does not fit), with a progress bar when ``desc`` is given."""
    if len(ds) == 0:
        raise TrainingError("no windows in this split")
    from tqdm import tqdm

    from shared_features.package import Scores

    parts = []
    with tqdm(total=len(ds), desc=desc, disable=desc is None, unit="window", mininterval=1.0) as bar:
        for i in range(0, len(ds), batch):
            x = waveforms(ds, range(i, min(i + batch, len(ds))))
            parts.append(pkg.predict(x))
            bar.update(len(x))
    members = {k: np.concatenate([p.members[k] for p in parts]) for k in parts[0].members}
    scores = Scores(np.concatenate([p.probs for p in parts]), members, parts[0].known)
    return scores, np.asarray(ds.target_matrix(), np.float32)


def build_ensemble(
    data_dir: Path,
    out: Path,
    *,
    checkpoints: list[Path],
    birdnet_head: Path | None = None,
    birdnet: bool = True,
    name: str = "silencio-ensemble",
    version: str | None = None,
    seed: int = 0,
    trials: int = 200,
    tracker: Tracker | None = None,
    threads: int = 2,
    progress: bool = True,
) -> EnsembleResult:
    from training.data import from_audio, soundscape_waveforms
    from training.dataset import BirdCLEFDataset, read_solution_csv
    from training.ensemble import fit_weights
    from training.export import export_onnx
    from training.metrics import birdclef_roc_auc
    from training.package import update_manifest, write_package

    tracker = tracker or NullTracker()
    if not checkpoints and birdnet_head is None and not birdnet:
        raise TrainingError("an ensemble needs at least one member")
    data = from_audio(data_dir, DEFAULT, seed=seed, soundscapes=False)
    labels: LabelSpace = data.labels
    if len(data.val) == 0:
        raise TrainingError("no windows in this split")
    log.info("ensemble: %d validation windows", len(data.val))
    version = version or time.strftime("%Y%m%d%H%M%S", time.gmtime())
    members: list[tuple[MemberSpec, Path | None]] = []
    with tempfile.TemporaryDirectory() as tmp:
        parity = log_mel(waveforms(data.val, range(min(8, len(data.val)))), DEFAULT)
        for ckpt in checkpoints:
            onnx_path = Path(tmp) / f"{Path(ckpt).parent.name}-{len(members)}.onnx"
            info = export_onnx(Path(ckpt), onnx_path, parity)
            if info["labels"] != labels:
                raise TrainingError(f"{ckpt}: its label space differs from the dataset's")
            mname = info["member"]
            while any(m.name == mname for m, _ in members):
                mname += "_b"
            spec = MemberSpec(
                name=mname,
                runtime="onnx",
                feature_preset=info["feature_cfg"].name,
                feature_fingerprint=info["feature_cfg"].fingerprint(),
                metrics={**info["metrics"], "run_id": info["run_id"], "parity": info["parity"]},
            )
            members.append((spec, onnx_path))
        if birdnet_head is not None:
            members.append((MemberSpec(name="birdnet_head", runtime="birdnet-head"), Path(birdnet_head)))
        if birdnet:
            from shared_features.birdnet import BirdNET

            known = BirdNET(labels, embeddings=False).known
            codes = tuple(c for c, k in zip(labels.codes, known) if k)
            if codes:
                members.append((MemberSpec(name="birdnet", runtime="birdnet", known=codes), None))
            else:
                log.warning("BirdNET knows none of the %d species: zero-shot member left out", len(labels))
        write_package(Path(out), kind="ensemble", name=name, version=version, labels=labels, members=members)
    pkg = load_package(out, threads=threads)
    val, yv = score_windows(pkg, data.val, "ensemble: validation windows" if progress else None)
    names = [m.name for m in pkg.members]
    from training.progress import bar

    with bar("ensemble: fitting weights", unit="trial") as update:
        fw = fit_weights(
            yv,
            [val.members[n] for n in names],
            [val.known[n] for n in names],
            trials=trials,
            seed=seed,
            progress=update if progress else None,
        )
    weights = dict(zip(names, fw.weights))
    member_val = dict(zip(names, fw.member_val_roc_auc))
    fit_info = {
        "val_roc_auc": fw.val_roc_auc,
        "member_val_roc_auc": member_val,
        "windows": len(yv),
        "data": data.description,
        "dataset_fingerprint": data.dataset_fingerprint,
        "trials": fw.trials,
    }
    update_manifest(
        out, member_weights=weights, weights_fit=fit_info, metrics={"best_val_roc_auc": fw.val_roc_auc}
    )
    result = EnsembleResult(Path(out), weights, fw.val_roc_auc, member_val)
    truth = Path(data_dir) / "soundscape_solution.csv"
    if truth.exists():
        from shared_features.ensemble import combine

        final = load_package(out, threads=threads)  # with the fitted weights (runtimes load lazily)
        ids, waves = soundscape_waveforms(BirdCLEFDataset.load(data_dir), truth)
        # the members' scores from the runtimes already loaded, combined as ``final`` combines them
        s = predict_windows(pkg, waves, "ensemble: held-out soundscape windows" if progress else None)
        s.probs = combine([s.members[n] for n in names], [s.known[n] for n in names], final.weights)
        pkg = final
        _, _, ys = read_solution_csv(truth, labels)
        per = {n: birdclef_roc_auc(ys, s.members[n]) for n in names}
        result.soundscape = {
            "macro_roc_auc": birdclef_roc_auc(ys, s.probs),
            "member_macro_roc_auc": per,
            "uniform_macro_roc_auc": birdclef_roc_auc(ys, _uniform(s, names)),
            "windows": len(ids),
            "data": f"held-out soundscapes {truth} (never trained, early-stopped or weight-fitted on)",
        }
        _write_report(pkg, ids, s.probs, truth, Path(out) / "report")
        update_manifest(out, soundscape=result.soundscape)
    tracker.log_params(
        {"member": "ensemble", "members": ",".join(names), "data": data.description, "version": version}
    )
    tracker.log_metrics(
        {
            "best_val_roc_auc": fw.val_roc_auc,
            **{f"weight_{n}": w for n, w in weights.items()},
            **{f"val_roc_auc_{n}": v for n, v in member_val.items()},
            **({"soundscape_macro_roc_auc": result.soundscape["macro_roc_auc"]} if result.soundscape else {}),
        }
    )
    tracker.log_artifact(Path(out), "model")
    log.info("ensemble %s: weights %s, validation macro ROC-AUC %.4f", out, weights, fw.val_roc_auc)
    return result


def predict_windows(pkg: ModelPackage, windows: np.ndarray, desc: str | None, chunk: int = 8) -> Any:
    """``pkg.predict`` ``chunk`` windows at a time (each window's scores are its own), with a
    progress bar when ``desc`` is given; returns one :class:`shared_features.package.Scores`."""
    from tqdm import tqdm

    from shared_features.package import Scores

    parts = [
        pkg.predict(windows[i : i + chunk])
        for i in tqdm(
            range(0, len(windows), chunk), desc=desc, disable=desc is None, unit="chunk", mininterval=1.0
        )
    ]
    if not parts:
        return pkg.predict(windows)
    return Scores(
        np.concatenate([p.probs for p in parts]),
        {n: np.concatenate([p.members[n] for p in parts]) for n in parts[0].members},
        parts[0].known,
    )


def _uniform(s: Any, names: list[str]) -> np.ndarray:
    from shared_features.ensemble import combine

    return combine([s.members[n] for n in names], [s.known[n] for n in names], [1.0] * len(names))


def _write_report(pkg: ModelPackage, ids: list[str], probs: np.ndarray, truth: Path, out: Path) -> None:
    from training.dataset import write_solution_csv
    from training.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    pred = out / "soundscape_predictions.csv"
    write_solution_csv(pred, ids, probs, pkg.labels)
    write_report(
        pred,
        truth,
        out,
        data_name=f"held-out soundscapes {truth} (never trained, early-stopped or weight-fitted on)",
        model_name=f"ensemble {pkg.describe()}",
    )
