"""Quantisation-aware fine-tuning (QAT) of an edge student before its int8 export.

The int8 export is ONNX Runtime's static QDQ quantisation (:func:`training.export.quantize_int8`):
int8 weights symmetric per output channel, uint8 activations with calibrated ranges. QAT fine-tunes
the fp32 student with that rounding simulated in the forward pass, so its weights settle where
rounding moves the outputs least; the fine-tuned weights are then quantised by the same ONNX
Runtime path as before (fake quantisation is removed; ONNX Runtime recalibrates the activations).

What is simulated, in the parts the :class:`~training.export.Int8Recipe` quantises (its
``keep_float`` parts — SE blocks, first convolution, head — stay float here as in the export):

* **weights** of every ``Conv2d`` / ``Linear``: symmetric int8 (−127…127) per output channel
  (per tensor when the recipe says so), with a straight-through gradient. BatchNorm runs in eval
  mode (frozen statistics), so the export folds it into the convolution by a per-channel factor —
  and symmetric per-channel rounding commutes with that factor: rounding the raw weight is rounding
  the folded one.
* **activations**: the input of every quantised ``Conv2d`` / ``Linear`` and the output of every
  BatchNorm(+activation) and the convolution output before a hard-swish — what ONNX Runtime's QDQ
  graph rounds; a tensor is rounded once per pass — as uint8 over a range set from the calibration
  windows at the start of each epoch (ONNX Runtime's ``percentile`` rule: of ``|x|``, within
  min…max) and then following a moving average of each batch's range while the weights train;
  straight-through gradient inside the range, none outside.

The loss distils the quantised student towards the frozen fp32 student's own outputs
(``objective``: ``rank`` = softmax KL across species, for the top-1, plus sigmoid cross-entropy
against the fp32 probabilities, for their ranking; or ``mse`` of the logits): the goal is that int8
agrees with fp32, not a new model. Measured on the demo's students (README "Edge performance",
``benchmarks/edge_int8.py --qat-epochs``), 2 epochs bring int8 closer to fp32 on calibration and
soundscape windows but pass the validation agreement rule only marginally (2 of 3 seeds, by one or
two windows), so the export's default stays off (``Int8Recipe.qat_epochs`` = 0). Only :func:`qat_finetune` is
public; :func:`training.export.int8_export` calls it when asked (``qat_epochs``).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.errors import TrainingError
from training.models.checkpoint import load_checkpoint, read_meta, save_checkpoint
from training.models.factory import AudioClassifier, merge_lora

log = logging.getLogger(__name__)
__all__ = ["qat_finetune"]

_QUANTISED = (nn.Conv2d, nn.Linear)
#: activation values sampled per tensor and batch to set its range: with 4,096 the 99.99th percentile
#: is nearly the sample maximum and varies with the seed (README "Edge performance")
PER_CALL = 65536
#: activations ONNX Runtime folds into the preceding convolution's output range
_FUSED_ACTS = (nn.Identity, nn.ReLU, nn.ReLU6)


def _float_module_names(backbone: nn.Module, keep_float: tuple[str, ...]) -> set[str]:
    """Names (in ``backbone``) of the modules an int8 recipe keeps in float; mirrors
    :func:`training.export.float_nodes` on the module tree instead of the ONNX graph."""
    names = [n for n, _ in backbone.named_modules() if n]
    keep: set[str] = set()
    if "se" in keep_float:
        keep |= {n for n in names if n == "se" or n.startswith("se.") or ".se." in n or n.endswith(".se")}
    if "first" in keep_float:
        first = next((n for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d)), None)
        if first is not None:
            keep.add(first)
    if "head" in keep_float:
        pools = [i for i, n in enumerate(names) if n.split(".")[-1] == "global_pool"]
        if pools:
            keep |= set(names[pools[-1] :])  # registration order: the pooling, then the head
    return keep


def _fq_weight(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Symmetric int8 rounding of a weight (ONNX Runtime: QInt8, symmetric), straight-through."""
    if per_channel:
        amax = w.detach().abs().flatten(1).amax(1).clamp_min(1e-8)
        scale = (amax / 127.0).float()
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)
    scale_t = float(w.detach().abs().max().clamp_min(1e-8)) / 127.0
    return torch.fake_quantize_per_tensor_affine(w, scale_t, 0, -127, 127)


class _ActRange:
    """A uint8 activation range (lo ≤ 0 ≤ hi) fixed from calibration; None until observed."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.samples: list[torch.Tensor] = []
        self.scale = 0.0
        self.zero = 0
        self.lo = self.hi = 0.0
        self.ready = False

    def observe(self, x: torch.Tensor, per_call: int = PER_CALL) -> None:
        flat = x.detach().flatten()
        if flat.numel() > per_call:
            flat = flat[torch.randint(0, flat.numel(), (per_call,), device=flat.device)]
        self.samples.append(flat.float().cpu())

    @staticmethod
    def _bounds(v: torch.Tensor, percentile: float | None) -> tuple[float, float]:
        lo, hi = float(v.min()), float(v.max())
        if percentile is not None:  # ONNX Runtime's percentile: of |x|, symmetric, within min..max
            t = float(torch.quantile(v.abs(), percentile / 100.0))
            lo, hi = max(lo, -t), min(hi, t)
        return min(lo, 0.0), max(hi, 0.0)

    def _set(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi
        self.scale = max(hi - lo, 1e-8) / 255.0
        self.zero = int(round(-lo / self.scale))
        self.ready = True

    def fix(self, percentile: float | None) -> None:
        if not self.samples:
            return
        v = torch.cat(self.samples)
        self.samples = []
        self._set(*self._bounds(v, percentile))

    def track(self, x: torch.Tensor, percentile: float | None, momentum: float) -> None:
        """Follow the weights as they train: a moving average of each batch's range."""
        if not self.ready:
            return
        self.observe(x)
        lo, hi = self._bounds(self.samples.pop(), percentile)
        self._set(momentum * self.lo + (1 - momentum) * lo, momentum * self.hi + (1 - momentum) * hi)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.ready:
            return x
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero, 0, 255)


class _Simulator:
    """Hooks that simulate int8 on a backbone: weight rounding (forward pre-hook replaces the
    weight for the call), activation rounding (pre-hooks on inputs, hooks on BatchNorm outputs).
    ``mode``: "off" (plain fp32), "observe" (collect activation samples, no rounding), "quant"."""

    def __init__(self, backbone: nn.Module, keep_float: set[str], per_channel: bool) -> None:
        self.mode = "off"
        self.percentile: float | None = None
        self.momentum: float | None = None  # set: ranges follow each batch (while training)
        self.per_channel = per_channel
        self.ranges: list[_ActRange] = []
        self.handles: list[Any] = []
        self.weights: list[nn.Module] = []
        # tensors already rounded in this forward pass (a BatchNorm output read by the next
        # convolution is one tensor in the ONNX graph, rounded once): id → tensor, kept alive
        self.rounded: dict[int, torch.Tensor] = {}
        self.handles.append(backbone.register_forward_pre_hook(lambda *_: self.rounded.clear()))
        for name, mod in backbone.named_modules():
            if name in keep_float:
                continue
            if isinstance(mod, _QUANTISED):
                r_in = _ActRange(f"{name} input")
                self.ranges.append(r_in)
                self.weights.append(mod)
                self.handles.append(mod.register_forward_pre_hook(self._pre(mod, r_in)))
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                r_out = _ActRange(f"{name} output")
                self.ranges.append(r_out)
                self.handles.append(mod.register_forward_hook(self._post(r_out)))
                act = getattr(mod, "act", None)
                if isinstance(act, nn.Module) and not isinstance(act, _FUSED_ACTS):
                    # ONNX Runtime rounds the convolution's output before a hard-swish (its own QDQ
                    # pair; ReLU is fused into the convolution's range instead)
                    r_pre = _ActRange(f"{name} before {type(act).__name__}")
                    self.ranges.append(r_pre)
                    self.handles.append(act.register_forward_pre_hook(self._pre(act, r_pre)))

    def _apply(self, r: _ActRange, x: torch.Tensor) -> torch.Tensor:
        """``x`` observed (``observe``), rounded to ``r``'s range (``quant``; the range follows
        the batch when ``momentum`` is set) or left alone (``off``)."""
        if self.mode == "observe":
            r.observe(x)
        elif self.mode == "quant":
            if self.momentum is not None:
                r.track(x, self.percentile, self.momentum)
            x = r(x)
        return x

    def _pre(self, mod: nn.Module, r: _ActRange) -> Callable[..., Any]:
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            x = args[0]
            if id(x) in self.rounded:
                return args
            return (self._apply(r, x), *args[1:])

        return hook

    def _post(self, r: _ActRange) -> Callable[..., Any]:
        def hook(_m: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
            out = self._apply(r, out)
            if self.mode != "off":
                self.rounded[id(out)] = out
            return out

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class _QuantWeights:
    """Context: every simulated module's ``weight`` is its int8-rounded self (straight-through) for
    the forward passes inside; the trainable parameter is untouched."""

    def __init__(self, sim: _Simulator) -> None:
        self.sim = sim
        self.saved: list[tuple[nn.Module, nn.Parameter]] = []

    def __enter__(self) -> None:
        for mod in self.sim.weights:
            w = mod.weight
            assert isinstance(w, nn.Parameter)
            self.saved.append((mod, w))
            del mod._parameters["weight"]
            mod.weight = _fq_weight(w, self.sim.per_channel)  # type: ignore[assignment]

    def __exit__(self, *exc: object) -> None:
        for mod, w in self.saved:
            del mod.weight
            mod._parameters["weight"] = w
        self.saved = []


def _distillation_loss(got: torch.Tensor, target: torch.Tensor, objective: str) -> torch.Tensor:
    """``mse``: of the logits; ``rank``: softmax KL across species (the top-1) plus the sigmoid
    cross-entropy against the fp32 probabilities (their ranking across windows: ROC-AUC)."""
    if objective == "mse":
        return torch.mean((got - target) ** 2)
    if objective == "rank":
        kl = nn.functional.kl_div(
            got.log_softmax(1), target.log_softmax(1), log_target=True, reduction="batchmean"
        )
        bce = nn.functional.binary_cross_entropy_with_logits(got, torch.sigmoid(target))
        return kl + bce
    raise TrainingError(f"unknown QAT objective {objective!r} (mse, rank)")


def _batches(n: int, size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    order = rng.permutation(n)
    for i in range(0, n, size):
        yield order[i : i + size]


def qat_finetune(
    ckpt: Path,
    out: Path,
    train_feats: np.ndarray,
    calibration: np.ndarray,
    *,
    epochs: int = 2,
    keep_float: tuple[str, ...] = ("se", "head"),
    per_channel: bool = True,
    percentile: float | None = 99.99,
    lr: float = 5e-5,
    batch_size: int = 32,
    seed: int = 0,
    momentum: float | None = 0.9,
    objective: str = "rank",
) -> dict[str, Any]:
    """Fine-tune ``ckpt`` for ``epochs`` passes over ``train_feats`` (log-mel ``[n, n_mels, frames]``)
    with int8 simulated, distilling towards the fp32 model's logits; write the result to ``out``
    (same checkpoint format; its ``qat`` entry records how). ``calibration``: the windows the
    activation ranges are fixed on (the export's calibration windows). Returns the ``qat`` record
    (loss per epoch, the simulated int8's top-1 agreement with fp32 on the calibration windows
    before and after, the distance the weights moved, seconds)."""
    if epochs < 1:
        raise TrainingError(f"QAT epochs must be ≥ 1, got {epochs}")
    train_feats = np.asarray(train_feats, np.float32)
    calibration = np.asarray(calibration, np.float32)
    if len(train_feats) == 0 or len(calibration) == 0:
        raise TrainingError("QAT needs training and calibration windows; got none")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model, labels, blob = load_checkpoint(ckpt)
    model = merge_lora(model)
    model.eval()  # BatchNorm frozen (see the module doc), dropout off
    teacher: AudioClassifier = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    before = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}
    sim = _Simulator(model.backbone, _float_module_names(model.backbone, keep_float), per_channel)
    sim.percentile = percentile
    params = [p for p in model.backbone.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    feats_t = torch.from_numpy(train_feats)
    calib_t = torch.from_numpy(calibration)

    def fix_ranges() -> None:
        sim.mode = "observe"
        with torch.no_grad(), _QuantWeights(sim):
            for i in range(0, len(calib_t), 64):
                model.backbone(model.features(calib_t[i : i + 64]))
        for r in sim.ranges:
            r.fix(percentile)

    def simulated_agreement() -> float:
        """Top-1 agreement of the simulated int8 model with fp32 on the calibration windows."""
        sim.mode = "quant"
        hits = 0
        with torch.no_grad(), _QuantWeights(sim):
            for i in range(0, len(calib_t), 64):
                x = calib_t[i : i + 64]
                got = model.backbone(model.features(x)).argmax(1)
                hits += int((got == teacher.backbone(teacher.features(x)).argmax(1)).sum())
        return hits / len(calib_t)

    losses: list[float] = []
    agreement: list[float] = []
    try:
        for _ in range(epochs):
            fix_ranges()
            if not agreement:
                agreement.append(simulated_agreement())
            sim.mode, sim.momentum = "quant", momentum
            total, count = 0.0, 0
            for idx in _batches(len(feats_t), batch_size, rng):
                x = feats_t[torch.from_numpy(idx)]
                with torch.no_grad():
                    target = teacher.backbone(teacher.features(x))
                with _QuantWeights(sim):
                    got = model.backbone(model.features(x))
                loss = _distillation_loss(got, target, objective)
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            sim.momentum = None
            losses.append(total / count)
            log.info(
                "QAT epoch %d/%d: distillation loss (%s) %.5f", len(losses), epochs, objective, losses[-1]
            )
        fix_ranges()
        agreement.append(simulated_agreement())
    finally:
        sim.mode = "off"
        sim.remove()
    after = model.backbone.state_dict()
    moved = max(float((after[k].float() - v.float()).abs().max()) for k, v in before.items())
    record = {
        "epochs": epochs,
        "windows": int(len(train_feats)),
        "calibration_windows": int(len(calibration)),
        "keep_float": list(keep_float),
        "per_channel": per_channel,
        "percentile": percentile,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "momentum": momentum,
        "objective": objective,
        "loss": losses,
        "simulated_top1_agreement": {"before": agreement[0], "after": agreement[-1]},
        "max_abs_weight_change": moved,
        "seconds": round(time.perf_counter() - t0, 2),
        "from": str(ckpt),
    }
    meta = read_meta(Path(ckpt))
    save_checkpoint(
        Path(out),
        model,
        labels,
        metrics=dict(meta.get("metrics", {})),
        run_id=blob.get("run_id"),
        extra={"qat": record},
    )
    log.info("QAT: %d epochs on %d windows in %.1f s → %s", epochs, len(train_feats), record["seconds"], out)
    return record
