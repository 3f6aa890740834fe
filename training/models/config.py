"""``ModelConfig``: what a member is, as a frozen, serialisable dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from training.errors import TrainingError

ARCHS = ("resnet50", "efficientnet_b0", "cnn14_sed", "student")
STUDENT_TIMM = "mobilenetv3_small_100"


@dataclass(frozen=True)
class ModelConfig:
    """One ensemble member.

    ``arch``: ``resnet50`` (timm, from scratch), ``efficientnet_b0`` (timm; with ``lora_rank > 0``
    LoRA adapters on the pointwise convolutions, fine-tuned from ``base_checkpoint``),
    ``cnn14_sed`` (PANNs CNN14 with attention pooling; ``sed_width`` 64 is the PANNs size),
    ``student`` (the small edge CNN distilled from the ensemble; timm ``mobilenetv3_small_100``
    by default — chosen by measured speed and accuracy, see ``benchmarks/edge_models.py``).
    ``timm_name`` overrides the timm model (tests use tiny ones such as ``resnet10t``).
    ``input_downsample`` average-pools the log-mel image by that factor before the network, to
    fit CPU budgets; 1 uses the full resolution. ``global_pool`` is timm's pooling of the last
    feature map (``avg``, ``max``, ``avgmax``); on the synthetic soundscapes ``max`` scored below
    ``avg`` (0.75 vs 0.82 macro ROC-AUC, EfficientNet-B0, 12 epochs), so ``avg`` is the default.
    """

    arch: str
    timm_name: str | None = None
    feature_preset: str = "default"
    input_downsample: int = 1
    drop_rate: float = 0.2
    lora_rank: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    base_checkpoint: str | None = None
    global_pool: str = "avg"
    sed_width: int = 64
    panns_checkpoint: str | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise TrainingError(f"unknown member arch {self.arch!r}; known: {', '.join(ARCHS)}")
        if self.input_downsample < 1:
            raise TrainingError(f"input_downsample must be ≥ 1, got {self.input_downsample}")
        if self.lora_rank and self.arch != "efficientnet_b0":
            raise TrainingError(f"LoRA is implemented for efficientnet_b0, not {self.arch}")
        if self.panns_checkpoint and self.sed_width != 64:
            raise TrainingError("a PANNs checkpoint needs sed_width=64 (the CNN14 size)")

    @property
    def name(self) -> str:
        return f"{self.arch}{'_lora' if self.lora_rank else ''}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TrainingError(f"unknown ModelConfig keys {unknown}")
        return cls(**d)

    def replace(self, **kw: Any) -> ModelConfig:
        return dataclasses.replace(self, **kw)


#: The members of the design, at their real sizes.
MEMBERS: dict[str, ModelConfig] = {
    "resnet50": ModelConfig("resnet50"),
    "efficientnet_b0": ModelConfig("efficientnet_b0"),
    "efficientnet_b0_lora": ModelConfig("efficientnet_b0", lora_rank=8),
    "cnn14_sed": ModelConfig("cnn14_sed"),  # the "panns" preset with a PANNs checkpoint
    "student": ModelConfig("student", drop_rate=0.1),
}


def member_config(name: str, **overrides: Any) -> ModelConfig:
    try:
        base = MEMBERS[name]
    except KeyError:
        raise TrainingError(f"unknown member {name!r}; known: {sorted(MEMBERS)}") from None
    return base.replace(**{k: v for k, v in overrides.items() if v is not None})
