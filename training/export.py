"""Export members for the edge and the cloud, with their contracts inside, and refuse to publish
exports that are worse than their thresholds.

An exported graph takes log-mel features ``[batch, n_mels, n_frames] float32`` (computed by
``shared_features`` on the device, numpy) and returns sigmoid probabilities ``[batch, n_species]``.
Its ONNX ``metadata_props`` carry ``feature_config`` (JSON, with fingerprint),
``feature_fingerprint``, ``labels`` (LabelSpace JSON), ``model_config``, ``run_id``, ``metrics``
and ``package_version``.

* **ONNX fp32** is refused when ONNX Runtime and PyTorch disagree by more than ``tolerance``
  (1e-4) on the check windows.
* **ONNX int8** is static QDQ quantisation calibrated on real windows, following an
  :class:`Int8Recipe` (default :data:`DEFAULT_INT8`: per-channel int8 weights, uint8 activations,
  99.99th-percentile calibration, the squeeze-excitation blocks and the classifier head kept in
  float — the recipe with the smallest ROC-AUC drop in ``benchmarks/edge_int8.py``, README
  "Edge performance"); optionally after quantisation-aware fine-tuning (``Int8Recipe.qat_epochs``,
  :mod:`training.qat`); it is compared with the fp32 export on held-out real windows (top-1
  agreement, macro ROC-AUC drop against their labels) and refused below :class:`PublishThresholds`.
* **TFLite** comes from ``scripts/export_tflite.sh`` (litert-torch in its own environment).

Each export is wrapped as an ``edge`` model package (:mod:`shared_features.package`) with its
figures in ``package.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shared_features.package import PACKAGE_VERSION, MemberSpec, onnx_runner, sha256_file
from training.errors import TrainingError
from training.models.checkpoint import load_checkpoint
from training.models.factory import AudioClassifier, merge_lora
from training.package import write_package

log = logging.getLogger(__name__)
__all__ = [
    "DEFAULT_INT8",
    "ExportError",
    "Int8Recipe",
    "PublishThresholds",
    "calibration_windows",
    "check_features",
    "export_edge",
    "export_edge_formats",
    "export_onnx",
    "float_nodes",
    "int8_export",
    "quantize_int8",
    "sha256_file",
]


class ExportError(TrainingError):
    """An export that failed its checks (parity, metadata); nothing is published."""


class _FeaturesToProbs(nn.Module):
    def __init__(self, model: AudioClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model.backbone(self.model.features(feats)))


def export_onnx(
    ckpt: Path, path: Path, windows: np.ndarray | None = None, *, tolerance: float = 1e-4, opset: int = 17
) -> dict[str, Any]:
    """Export ``ckpt`` to the ONNX file ``path``; returns ``{member, labels, feature_cfg, run_id,
    metrics, parity}``. ``windows``: ``[n, n_mels, n_frames]`` features for the parity check
    (default: 8 seeded random feature windows — prefer real ones)."""
    import onnx
    import onnxruntime as ort

    model, labels, blob = load_checkpoint(ckpt)
    member = model.mcfg.name  # before merging: efficientnet_b0_lora stays named so
    model = merge_lora(model).eval()
    cfg = model.feature_cfg
    if windows is None:
        windows = np.random.default_rng(0).standard_normal((8, cfg.n_mels, cfg.n_frames)).astype(np.float32)
    windows = np.asarray(windows, np.float32)
    wrapper = _FeaturesToProbs(model).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
        prop = m.metadata_props.add()
        prop.key, prop.value = k, v
    onnx.save(m, str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"features": windows})[0]
    with torch.no_grad():
        ref = wrapper(torch.from_numpy(windows)).numpy()
    diff = float(np.abs(got - ref).max())
    if diff > tolerance:
        path.unlink()
        raise ExportError(f"ONNX and PyTorch disagree by {diff:.2e} > {tolerance:.0e}; not exported")
    log.info("exported %s → %s (parity %.2e)", ckpt, path, diff)
    return {
        "member": member,
        "labels": labels,
        "feature_cfg": cfg,
        "run_id": blob.get("run_id"),
        "metrics": blob.get("metrics", {}),
        "parity": {"max_abs_diff_vs_torch": diff, "windows": int(len(windows)), "tolerance": tolerance},
    }


#: the parts of a network an :class:`Int8Recipe` can keep in float
FLOAT_PARTS = ("se", "first", "head")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Int8Recipe:
    """How the int8 export is quantised (ONNX Runtime static quantisation, QDQ format).

    ``keep_float``: parts left in float32 — ``se``: the squeeze-excitation blocks (nodes under a
    module named ``se``: their global mean, two 1x1 convolutions and the gate multiply a whole
    channel at once, so one rounding step moves every frame of it); ``first``: the first
    convolution (it reads the log-mel directly); ``head``: everything after the last global pooling
    (the head convolution and the classifier). ``per_channel``: one weight scale per output
    channel. ``calibration``: how activation ranges are found on the calibration windows —
    ``minmax``, ``entropy`` (KL) or ``percentile`` (``percentile`` of the absolute values).
    ``entropy`` is offered but gives min-max's ranges: ONNX Runtime's static path searches the KL
    threshold over 128 histogram bins for 128 quantised levels (it takes no option to change them),
    so the full range is its only candidate (``benchmarks/edge_int8.py`` shows identical figures).
    ``qat_epochs``: when > 0, the checkpoint is first fine-tuned for that many passes over the
    calibration windows with this recipe's int8 rounding simulated (:func:`training.qat.qat_finetune`,
    distilling towards its own fp32 outputs), and the fine-tuned weights are what is quantised; the
    int8 is still compared with the *original* fp32 export."""

    keep_float: tuple[str, ...] = ()
    per_channel: bool = True
    calibration: str = "minmax"
    percentile: float = 99.999
    qat_epochs: int = 0

    def __post_init__(self) -> None:
        bad = sorted(set(self.keep_float) - set(FLOAT_PARTS))
        if bad:
            raise ExportError(f"keep_float: unknown parts {bad}; known: {list(FLOAT_PARTS)}")
        if self.calibration not in CALIBRATION_METHODS:
            raise ExportError(f"calibration {self.calibration!r} not in {list(CALIBRATION_METHODS)}")
        if self.qat_epochs < 0:
            raise ExportError(f"qat_epochs must be ≥ 0, got {self.qat_epochs}")

    def describe(self) -> str:
        keep = "+".join(self.keep_float) if self.keep_float else "nothing"
        return (
            f"{'per-channel' if self.per_channel else 'per-tensor'}, {self.calibration}"
            f"{f' {self.percentile}' if self.calibration == 'percentile' else ''}, float: {keep}"
            f"{f', QAT {self.qat_epochs} epochs' if self.qat_epochs else ''}"
        )


#: the export's default (benchmarks/edge_int8.py on two demo students, README "Edge performance"):
#: SE blocks and head in float, percentile calibration — the smallest ROC-AUC drop of the recipes
#: tried; its calibration costs ~8x min-max's CPU (one window per calibration batch)
DEFAULT_INT8 = Int8Recipe(keep_float=("se", "head"), calibration="percentile", percentile=99.99)


def float_nodes(model: Any, parts: tuple[str, ...]) -> list[str]:
    """Names of the nodes of an ONNX graph (in topological order, as exported) that ``parts`` keep
    in float; see :class:`Int8Recipe`."""
    nodes = list(model.graph.node)
    keep: list[str] = []
    if "se" in parts:
        keep += [n.name for n in nodes if "/se/" in n.name]
    if "first" in parts:
        first = next((n for n in nodes if n.op_type == "Conv"), None)
        if first is not None:
            keep.append(first.name)
    if "head" in parts:
        pools = [i for i, n in enumerate(nodes) if n.op_type == "GlobalAveragePool"]
        if pools:
            keep += [n.name for n in nodes[pools[-1] :]]
    return list(dict.fromkeys(keep))


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray, recipe: Int8Recipe | None = None) -> Path:
    """Static QDQ int8 quantisation of an fp32 ONNX model (int8 weights, uint8 activations),
    calibrated on ``calibration`` ``[n, n_mels, n_frames]`` real windows, following ``recipe``
    (default :data:`DEFAULT_INT8`)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    recipe = recipe or DEFAULT_INT8
    calib = np.asarray(calibration, np.float32)
    if len(calib) == 0:
        raise ExportError("int8 calibration needs real windows; got none")

    # the histogram calibrators (entropy, percentile) need batches of one shape: one window each
    step = 8 if recipe.calibration == "minmax" else 1

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter([{"features": calib[i : i + step]} for i in range(0, len(calib), step)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[recipe.calibration]
    extra: dict[str, Any] = {}
    if recipe.calibration == "percentile":
        extra["CalibPercentile"] = recipe.percentile
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        exclude = float_nodes(onnx.load(str(pre)), recipe.keep_float)
        # ONNX Runtime's histogram calibrators print() their progress ("Collecting tensor data and
        # making histogram ...") onto stdout: into the debug log instead
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            quantize_static(
                str(pre),
                str(out),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=recipe.per_channel,
                weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8,
                calibrate_method=method,
                nodes_to_exclude=exclude,
                extra_options=extra,
            )
        if printed.getvalue().strip():
            log.debug("onnxruntime calibration: %s", printed.getvalue().strip())
    # quantisation drops custom metadata: carry it over from the fp32 model
    src, q = onnx.load(str(fp32)), onnx.load(str(out))
    del q.metadata_props[:]
    for prop in src.metadata_props:
        new = q.metadata_props.add()
        new.key, new.value = prop.key, prop.value
    onnx.save(q, str(out))
    log.info("int8 (%s): %d nodes kept in float", recipe.describe(), len(exclude))
    return Path(out)


def int8_export(
    ckpt: Path,
    fp32: Path,
    out: Path,
    calibration: np.ndarray,
    parity: np.ndarray,
    recipe: Int8Recipe | None = None,
    *,
    tolerance: float = 1e-4,
) -> tuple[Path, dict[str, Any] | None]:
    """The int8 ONNX file ``out`` of ``ckpt`` (whose fp32 export is ``fp32``) following ``recipe``:
    :func:`quantize_int8` of ``fp32``, or — ``recipe.qat_epochs`` > 0 — of a quantisation-aware
    fine-tuned copy (trained on ``calibration``, exported beside ``out`` and parity-checked on
    ``parity``). Returns (``out``, the QAT record or None)."""
    recipe = recipe or DEFAULT_INT8
    if recipe.qat_epochs == 0:
        return quantize_int8(fp32, out, calibration, recipe), None
    from training.qat import qat_finetune

    out = Path(out)
    tuned, tuned_onnx = out.with_suffix(".qat.pt"), out.with_suffix(".qat.onnx")
    record = qat_finetune(
        ckpt,
        tuned,
        calibration,
        calibration,
        epochs=recipe.qat_epochs,
        keep_float=recipe.keep_float,
        per_channel=recipe.per_channel,
        percentile=recipe.percentile if recipe.calibration == "percentile" else None,
    )
    try:
        export_onnx(tuned, tuned_onnx, parity, tolerance=tolerance)
        quantize_int8(tuned_onnx, out, calibration, recipe)
    finally:
        tuned.unlink(missing_ok=True)
        tuned_onnx.unlink(missing_ok=True)
    return out, record


@dataclass(frozen=True)
class PublishThresholds:
    """A quantised / converted export is published only if, on held-out real windows, its top-1
    agrees with fp32 on at least ``min_top1_agreement`` of the windows and its macro ROC-AUC is at
    most ``max_roc_auc_drop`` below fp32's."""

    min_top1_agreement: float = 0.90
    max_roc_auc_drop: float = 0.02


def compare(ref: np.ndarray, got: np.ndarray, targets: np.ndarray | None) -> dict[str, float]:
    """Agreement of an export with its fp32 reference on the same windows."""
    from training.metrics import birdclef_roc_auc

    out = {
        "top1_agreement": float((ref.argmax(1) == got.argmax(1)).mean()),
        "max_abs_diff": float(np.abs(ref - got).max()),
        "windows": float(len(ref)),
    }
    if targets is not None:
        y = np.asarray(targets) >= 0.5
        a_ref, a_got = birdclef_roc_auc(y, ref), birdclef_roc_auc(y, got)
        out.update(roc_auc_fp32=a_ref, roc_auc=a_got, roc_auc_drop=a_ref - a_got)
    return out


def _onnx_probs(path: Path, feats: np.ndarray) -> np.ndarray:
    run = onnx_runner(path, threads=2)
    return np.concatenate([run(feats[i : i + 32]) for i in range(0, len(feats), 32)])


def export_edge(
    ckpt: Path,
    out_root: Path,
    *,
    parity: np.ndarray,
    calibration: np.ndarray,
    check: np.ndarray,
    check_targets: np.ndarray | None,
    name: str = "silencio-edge",
    version: str = "0",
    formats: tuple[str, ...] = ("onnx-fp32", "onnx-int8"),
    thresholds: PublishThresholds = PublishThresholds(),
    tolerance: float = 1e-4,
    extra: dict[str, Any] | None = None,
    int8: Int8Recipe | None = None,
) -> dict[str, dict[str, Any]]:
    """Every format of ``formats`` or none: :func:`export_edge_formats` with all of them required."""
    manifests, _ = export_edge_formats(
        ckpt,
        out_root,
        parity=parity,
        calibration=calibration,
        check=check,
        check_targets=check_targets,
        name=name,
        version=version,
        formats=formats,
        required=formats,
        thresholds=thresholds,
        tolerance=tolerance,
        extra=extra,
        int8=int8,
    )
    return manifests


def export_edge_formats(
    ckpt: Path,
    out_root: Path,
    *,
    parity: np.ndarray,
    calibration: np.ndarray,
    check: np.ndarray,
    check_targets: np.ndarray | None,
    name: str = "silencio-edge",
    version: str = "0",
    formats: tuple[str, ...] = ("onnx-fp32", "onnx-int8"),
    required: tuple[str, ...] = ("onnx-fp32",),
    thresholds: PublishThresholds = PublishThresholds(),
    tolerance: float = 1e-4,
    extra: dict[str, Any] | None = None,
    int8: Int8Recipe | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Export ``ckpt`` as edge packages ``out_root/<format>/``; returns format → manifest.

    ``parity``: windows for the fp32 parity check; ``calibration``: windows for int8 calibration;
    ``check`` / ``check_targets``: held-out windows (and labels) on which each export is compared
    with fp32; ``int8``: the quantisation recipe (default :data:`DEFAULT_INT8`). A ``required``
    format that fails its thresholds raises :class:`ExportError` and nothing is published; another
    is refused (format → reason in the second return value) and leaves nothing under its directory.
    Returns (format → manifest, format → refusal)."""
    int8 = int8 or DEFAULT_INT8
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    unknown = set(formats) - {"onnx-fp32", "onnx-int8"}
    if unknown:
        raise ExportError(f"unknown export formats {sorted(unknown)} (TFLite: scripts/export_tflite.sh)")
    required = tuple(f for f in required if f in formats)
    manifests: dict[str, dict[str, Any]] = {}
    refused: dict[str, str] = {}
    with tempfile.TemporaryDirectory(dir=out_root) as tmp:
        fp32 = Path(tmp) / "model.onnx"
        info = export_onnx(ckpt, fp32, parity, tolerance=tolerance)
        ref = _onnx_probs(fp32, check)
        files = {"onnx-fp32": fp32}
        qat: dict[str, Any] | None = None
        if "onnx-int8" in formats:
            files["onnx-int8"], qat = int8_export(
                ckpt, fp32, Path(tmp) / "model.int8.onnx", calibration, parity, int8, tolerance=tolerance
            )
        validations: dict[str, dict[str, Any]] = {}
        for fmt in formats:  # check every format before publishing any
            validation: dict[str, Any] = {"parity": info["parity"]}
            if fmt != "onnx-fp32":
                cmp = compare(ref, _onnx_probs(files[fmt], check), check_targets)
                validation["vs_fp32"] = cmp
                validation["thresholds"] = asdict(thresholds)
                if fmt == "onnx-int8":
                    validation["int8_recipe"] = {**asdict(int8), "keep_float": list(int8.keep_float)}
                    if qat is not None:
                        validation["qat"] = qat
                bad = cmp["top1_agreement"] < thresholds.min_top1_agreement or (
                    cmp.get("roc_auc_drop", 0.0) > thresholds.max_roc_auc_drop
                )
                if bad:
                    why = (
                        f"{fmt} export of {ckpt} is worse than the thresholds on {len(check)} real "
                        f"windows: top-1 agreement {cmp['top1_agreement']:.3f} (min "
                        f"{thresholds.min_top1_agreement}), ROC-AUC drop {cmp.get('roc_auc_drop', 0):.4f} "
                        f"(max {thresholds.max_roc_auc_drop}); not published"
                    )
                    if fmt in required:
                        raise ExportError(why)
                    refused[fmt] = why
                    log.warning("%s", why)
                    continue
            validations[fmt] = validation
        for fmt in formats:
            if fmt in refused:
                dest = out_root / fmt
                if dest.exists():  # an older export of this format must not pass for this one
                    shutil.rmtree(dest)
                continue
            spec = MemberSpec(
                name=info["member"],
                runtime="onnx",
                feature_preset=info["feature_cfg"].name if info["feature_cfg"].name != "edge" else "default",
                feature_fingerprint=info["feature_cfg"].fingerprint(),
                quantization="int8" if fmt.endswith("int8") else "fp32",
                metrics=dict(info["metrics"]),
            )
            dest = out_root / fmt
            if dest.exists():
                shutil.rmtree(dest)
            manifests[fmt] = write_package(
                dest,
                kind="edge",
                name=name,
                version=version,
                labels=info["labels"],
                members=[(spec, files[fmt])],
                extra={
                    "format_name": fmt,
                    "run_id": info["run_id"],
                    "metrics": dict(info["metrics"]),
                    "validation": validations[fmt],
                    **(extra or {}),
                },
            )
            log.info("edge package %s → %s", fmt, dest)
    return manifests, refused


def calibration_windows(data_dir: Path, train_windows: Any, seed: int = 0, n: int = 256) -> np.ndarray:
    """int8 calibration windows ``[m, window_samples]``: ``n`` training windows plus up to ``n``
    windows of the unlabelled soundscapes — what the device will hear — when the dataset has any.
    ``train_windows`` is an array or a window set (audio source), of which only the picked windows
    are decoded (a BirdCLEF-sized training split's audio does not fit in memory)."""
    from training.distill import FileWindows, unlabelled_soundscapes

    if len(train_windows) == 0:
        raise TrainingError("no training windows to calibrate the int8 export on")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(train_windows))[:n]
    if isinstance(train_windows, np.ndarray):
        calib = train_windows[pick]
    else:
        from training.bundle import waveforms

        calib = waveforms(train_windows, [int(k) for k in pick])
    unl = FileWindows(unlabelled_soundscapes(data_dir))
    if len(unl):
        pick = rng.permutation(len(unl))[:n]
        calib = np.concatenate([calib, np.stack([unl.window(int(k)) for k in pick])])
    return calib


def check_features(val_windows: Any, n: int, seed: int = 0, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The set an export is checked on: log-mel ``[m, frames, n_mels]`` and targets ``[m, C]`` of
    every validation window, or of a seeded sample of ``n`` when there are more. Decoded ``batch``
    windows at a time; only the features are kept (bounded memory)."""
    from shared_features import DEFAULT, log_mel
    from training.bundle import waveforms

    total = len(val_windows)
    if total == 0:
        raise TrainingError("no validation windows to check the export on")
    keep = np.arange(total)
    if total > n:
        keep = np.sort(np.random.default_rng(seed).permutation(total)[:n])
    feats = np.concatenate(
        [
            log_mel(waveforms(val_windows, keep[i : i + batch].tolist()), DEFAULT)
            for i in range(0, len(keep), batch)
        ]
    )
    return feats, np.asarray(val_windows.target_matrix(), np.float32)[keep]
