"""Export a member to ONNX (fp32) for the edge and the cloud, with its contracts inside.

The exported graph takes log-mel features ``[batch, n_mels, n_frames] float32`` (computed by
``shared_features`` on the device, numpy) and returns sigmoid probabilities ``[batch, n_species]``.
Its ``metadata_props`` carry ``feature_config`` (JSON, with fingerprint), ``feature_fingerprint``,
``labels`` (LabelSpace JSON), ``model_config``, ``run_id``, ``metrics`` and
``package_version``. The export is refused when ONNX Runtime and PyTorch disagree by more than
``tolerance`` on the given windows.

Package layout (``PACKAGE_VERSION`` 1): ``DIR/model.onnx`` and ``DIR/package.json`` (format,
version, file name, sha256, feature fingerprint, label digest, run id, metrics, parity figures).
ONNX int8 and TFLite packages come with the model-factory issue.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.errors import TrainingError
from training.models.checkpoint import load_checkpoint
from training.models.factory import AudioClassifier, merge_lora

log = logging.getLogger(__name__)
PACKAGE_VERSION = 1


class ExportError(TrainingError):
    """An export that failed its checks (parity, metadata); nothing is published."""


class _FeaturesToProbs(nn.Module):
    def __init__(self, model: AudioClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model.backbone(self.model.features(feats)))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_onnx(
    ckpt: Path, out_dir: Path, windows: np.ndarray | None = None, *, tolerance: float = 1e-4, opset: int = 17
) -> dict[str, Any]:
    """Export ``ckpt`` to ``out_dir/model.onnx`` + ``package.json``; returns the manifest.
    ``windows``: ``[n, n_mels, n_frames]`` features for the parity check (default: 8 seeded
    random feature windows — prefer real ones)."""
    import onnx
    import onnxruntime as ort

    model, labels, blob = load_checkpoint(ckpt)
    model = merge_lora(model).eval()
    cfg = model.feature_cfg
    if windows is None:
        windows = np.random.default_rng(0).standard_normal((8, cfg.n_mels, cfg.n_frames)).astype(np.float32)
    windows = np.asarray(windows, np.float32)
    wrapper = _FeaturesToProbs(model).eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    torch.onnx.export(
        wrapper,
        (torch.from_numpy(windows[:1]),),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=["features"],
        output_names=["probs"],
        dynamic_axes={"features": {0: "batch"}, "probs": {0: "batch"}},
    )
    m = onnx.load(str(path))
    meta = {
        "feature_config": json.dumps(cfg.to_dict(), sort_keys=True),
        "feature_fingerprint": cfg.fingerprint(),
        "labels": labels.to_json(),
        "model_config": json.dumps(model.mcfg.to_dict(), sort_keys=True),
        "run_id": str(blob.get("run_id") or ""),
        "metrics": json.dumps(blob.get("metrics", {}), sort_keys=True),
        "package_version": str(PACKAGE_VERSION),
    }
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"features": windows})[0]
    with torch.no_grad():
        ref = wrapper(torch.from_numpy(windows)).numpy()
    diff = float(np.abs(got - ref).max())
    if diff > tolerance:
        path.unlink()
        raise ExportError(f"ONNX and PyTorch disagree by {diff:.2e} > {tolerance:.0e}; not exported")
    manifest = {
        "format": "onnx-fp32",
        "package_version": PACKAGE_VERSION,
        "file": path.name,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "member": model.mcfg.name,
        "feature_fingerprint": cfg.fingerprint(),
        "labels_sha256": labels.digest(),
        "n_species": len(labels),
        "run_id": blob.get("run_id"),
        "metrics": blob.get("metrics", {}),
        "parity": {"max_abs_diff_vs_torch": diff, "windows": int(len(windows)), "tolerance": tolerance},
    }
    (out_dir / "package.json").write_text(json.dumps(manifest, indent=2))
    log.info("exported %s → %s (parity %.2e)", ckpt, path, diff)
    return manifest
