"""TFLite export with litert-torch, run in the export environment (``scripts/export_tflite.sh``).

The converted graph has the ONNX export's contract (``[1, n_mels, n_frames]`` log-mel in,
``[1, n_species]`` probabilities out; batch 1, the edge scores one window at a time). It is
compared with PyTorch on real validation windows of the dataset (top-1 agreement, macro ROC-AUC
drop against their labels) and written as an ``edge`` package (runtime ``tflite``) only when it
passes :class:`training.export.PublishThresholds`. The feature config, fingerprint and label space
travel in ``package.json`` (TFLite has no free-form metadata that every runtime reads).

    python -m training.tflite CHECKPOINT OUT_DIR --data DATASET
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared_features import DEFAULT, log_mel
from shared_features.package import MemberSpec, tflite_runner
from training.errors import TrainingError
from training.export import ExportError, PublishThresholds, _FeaturesToProbs, compare
from training.models.checkpoint import load_checkpoint
from training.models.factory import merge_lora
from training.package import write_package

log = logging.getLogger(__name__)


def convert(ckpt: Path, path: Path, sample: np.ndarray) -> dict[str, Any]:
    """Convert ``ckpt`` to the TFLite file ``path``; returns the member's metadata."""
    try:
        import litert_torch
    except ImportError:
        raise TrainingError("TFLite export needs litert-torch: run scripts/export_tflite.sh") from None
    model, labels, blob = load_checkpoint(ckpt)
    member = model.mcfg.name
    wrapper = _FeaturesToProbs(merge_lora(model).eval()).eval()
    edge = litert_torch.convert(wrapper, (torch.from_numpy(np.asarray(sample[:1], np.float32)),))
    edge.export(str(path))
    return {"member": member, "labels": labels, "cfg": model.feature_cfg, "blob": blob, "torch": wrapper}


def tflite_probs(path: Path, feats: np.ndarray) -> np.ndarray:
    """``[n, n_mels, n_frames]`` → ``[n, C]`` through the package runtime's TFLite runner."""
    return tflite_runner(path, threads=2)(feats)


def export_tflite(
    ckpt: Path,
    out_root: Path,
    *,
    check: np.ndarray,
    check_targets: np.ndarray | None,
    name: str = "silencio-edge",
    version: str = "0",
    thresholds: PublishThresholds | None = None,
) -> dict[str, Any]:
    thresholds = thresholds or PublishThresholds()
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_root) as tmp:
        path = Path(tmp) / "model.tflite"
        info = convert(ckpt, path, check[:1])
        with torch.no_grad():
            ref = np.concatenate(
                [info["torch"](torch.from_numpy(check[i : i + 32])).numpy() for i in range(0, len(check), 32)]
            )
        cmp = compare(ref, tflite_probs(path, check), check_targets)
        if cmp["top1_agreement"] < thresholds.min_top1_agreement or cmp.get("roc_auc_drop", 0.0) > (
            thresholds.max_roc_auc_drop
        ):
            raise ExportError(
                f"TFLite export of {ckpt}: top-1 agreement {cmp['top1_agreement']:.3f}, ROC-AUC drop "
                f"{cmp.get('roc_auc_drop', 0):.4f} on {len(check)} real windows; not published"
            )
        spec = MemberSpec(
            name=info["member"],
            runtime="tflite",
            feature_preset="default",
            feature_fingerprint=info["cfg"].fingerprint(),
            metrics=dict(info["blob"].get("metrics", {})),
        )
        dest = out_root / "tflite"
        if dest.exists():
            shutil.rmtree(dest)
        return write_package(
            dest,
            kind="edge",
            name=name,
            version=version,
            labels=info["labels"],
            members=[(spec, path)],
            extra={
                "format_name": "tflite",
                "run_id": info["blob"].get("run_id"),
                "metrics": dict(info["blob"].get("metrics", {})),
                "validation": {"vs_torch": cmp, "thresholds": thresholds.__dict__},
            },
        )


def main(argv: list[str] | None = None) -> int:
    from training.bundle import windows_of
    from training.data import from_audio

    ap = argparse.ArgumentParser(prog="training.tflite", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="dataset whose validation windows check it")
    ap.add_argument("--min-agreement", type=float, default=0.90)
    ap.add_argument("--max-auc-drop", type=float, default=0.02)
    ap.add_argument("--name", default="silencio-edge")
    ap.add_argument("--version", default="0")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data = from_audio(args.data, DEFAULT, soundscapes=False)
    xv, yv = windows_of(data.val)
    feats = np.concatenate([log_mel(xv[i : i + 32], DEFAULT) for i in range(0, len(xv), 32)])
    try:
        man = export_tflite(
            args.checkpoint,
            args.out,
            check=feats,
            check_targets=yv,
            name=args.name,
            version=args.version,
            thresholds=PublishThresholds(args.min_agreement, args.max_auc_drop),
        )
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    v = man["validation"]["vs_torch"]
    m = man["members"][0]
    print(
        f"tflite: {args.out / 'tflite'} ({m['bytes'] / 1e6:.2f} MB); vs PyTorch on {int(v['windows'])} "
        f"validation windows: top-1 agreement {v['top1_agreement']:.3f}, max |diff| {v['max_abs_diff']:.1e}, "
        f"macro ROC-AUC {v['roc_auc']:.4f} (PyTorch {v['roc_auc_fp32']:.4f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
