"""Build members from a :class:`ModelConfig`, wrapped with the shared torch log-mel front end."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shared_features import FeatureConfig, get_preset
from shared_features.mel_torch import TorchLogMel
from training.errors import TrainingError
from training.models.config import STUDENT_TIMM, ModelConfig
from training.models.sed import Cnn14SED

log = logging.getLogger(__name__)

LORA_TARGETS = r".*\.(conv_pw|conv_pwl)$|^conv_head$"


class SpecAugment(nn.Module):
    """Random time and frequency masks on ``[B, 1, n_mels, frames]`` features (training only)."""

    def __init__(
        self, freq_masks: int = 2, freq_width: int = 12, time_masks: int = 2, time_width: int = 30
    ) -> None:
        super().__init__()
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        x = x.clone()
        b, _, m, t = x.shape
        fill = x.mean(dim=(1, 2, 3), keepdim=True)
        for dim, n, width, size in (
            (2, self.freq_masks, self.freq_width, m),
            (3, self.time_masks, self.time_width, t),
        ):
            for _ in range(n):
                w = torch.randint(0, max(1, min(width, size // 4)) + 1, (b,), device=x.device)
                s = (torch.rand(b, device=x.device) * (size - w).clamp(min=1)).long()
                idx = torch.arange(size, device=x.device)
                mask = (idx[None] >= s[:, None]) & (idx[None] < (s + w)[:, None])  # [b, size]
                mask = mask[:, None, :, None] if dim == 2 else mask[:, None, None, :]
                x = torch.where(mask, fill, x)
        return x


class AudioClassifier(nn.Module):
    """Front end + backbone. Input: ``[B, window_samples]`` waveforms, float32 or int16 PCM (log-mel
    computed on the model's device by :class:`TorchLogMel`, the shared recipe) or ``[B, n_mels, frames]``
    features from the ETL cache. Output: ``[B, n_classes]`` logits."""

    def __init__(self, backbone: nn.Module, feature_cfg: FeatureConfig, mcfg: ModelConfig) -> None:
        super().__init__()
        self.frontend = TorchLogMel(feature_cfg)
        self.backbone = backbone
        self.feature_cfg = feature_cfg
        self.mcfg = mcfg
        self.augment: nn.Module = nn.Identity()  # the training loop sets a SpecAugment

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.int16:  # 16-bit PCM windows (half the host→GPU traffic): to float here
            x = x.float() * (1.0 / 32768.0)
        if x.dim() == 2:
            x = self.frontend(x)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if self.mcfg.input_downsample > 1:
            x = F.avg_pool2d(x, self.mcfg.input_downsample)
        return x.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)
        if self.training:
            feats = self.augment(feats)
        out: torch.Tensor = self.backbone(feats)
        return out


def _timm(name: str, n_classes: int, drop_rate: float, global_pool: str = "avg") -> nn.Module:
    import timm

    return timm.create_model(
        name,
        pretrained=False,
        in_chans=1,
        num_classes=n_classes,
        drop_rate=drop_rate,
        global_pool=global_pool,
    )


def _load_base(model: nn.Module, path: str) -> None:
    """Load a base checkpoint: a timm/torchvision ImageNet state dict (3-channel stem summed to
    one channel, classifier dropped) or one of our checkpoints (classifier dropped when the class
    count differs)."""
    blob: Any = torch.load(path, map_location="cpu", weights_only=False)
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else blob
    if not isinstance(state, dict):
        raise TrainingError(f"{path}: not a state dict or checkpoint")
    state = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("frontend.")}
    own = model.state_dict()
    fixed = {}
    for k, v in state.items():
        if k not in own:
            continue
        if v.dim() == 4 and own[k].dim() == 4 and v.shape[1] == 3 and own[k].shape[1] == 1:
            v = v.sum(dim=1, keepdim=True)
        if own[k].shape == v.shape:
            fixed[k] = v
    if len(fixed) < len(own) // 2:
        raise TrainingError(f"{path}: only {len(fixed)} of {len(own)} tensors match this model")
    model.load_state_dict(fixed, strict=False)
    log.info("base checkpoint %s: %d/%d tensors loaded", path, len(fixed), len(own))


def add_lora(backbone: nn.Module, mcfg: ModelConfig) -> nn.Module:
    """Wrap ``backbone`` with LoRA adapters on the pointwise convolutions (classifier trained)."""
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(
        r=mcfg.lora_rank,
        lora_alpha=mcfg.lora_alpha,
        lora_dropout=mcfg.lora_dropout,
        target_modules=LORA_TARGETS,
        modules_to_save=["classifier"],
    )
    return get_peft_model(backbone, lcfg)


def build_model(mcfg: ModelConfig, n_classes: int, weights_follow: bool = False) -> AudioClassifier:
    """Build a member. ``weights_follow``: a checkpoint's weights will be loaded into it next, so
    a LoRA member needs no base checkpoint (the saved weights include the base)."""
    fcfg = get_preset(mcfg.feature_preset)
    backbone: nn.Module
    if mcfg.arch == "resnet50":
        backbone = _timm(mcfg.timm_name or "resnet50", n_classes, mcfg.drop_rate, mcfg.global_pool)
    elif mcfg.arch == "efficientnet_b0":
        backbone = _timm(mcfg.timm_name or "efficientnet_b0", n_classes, mcfg.drop_rate, mcfg.global_pool)
        if mcfg.base_checkpoint:
            _load_base(backbone, mcfg.base_checkpoint)
        elif mcfg.lora_rank and not weights_follow:
            raise TrainingError(
                "LoRA fine-tuning needs a base checkpoint (--base): a local ImageNet "
                "checkpoint or an efficientnet_b0 trained by `silencio train fit`"
            )
        if mcfg.lora_rank:
            backbone = add_lora(backbone, mcfg)
    elif mcfg.arch == "student":
        backbone = _timm(mcfg.timm_name or STUDENT_TIMM, n_classes, mcfg.drop_rate, mcfg.global_pool)
    else:
        sed = Cnn14SED(fcfg.n_mels // mcfg.input_downsample, n_classes, mcfg.sed_width, mcfg.drop_rate)
        if mcfg.panns_checkpoint:
            if fcfg.fingerprint() != get_preset("panns").fingerprint():
                raise TrainingError("a PANNs checkpoint needs the 'panns' feature preset")
            sed.load_panns(mcfg.panns_checkpoint)
        backbone = sed
    return AudioClassifier(backbone, fcfg, mcfg)


def merge_lora(model: AudioClassifier) -> AudioClassifier:
    """Fold LoRA adapters into the weights (for export); a no-op for other members."""
    bb = model.backbone
    if hasattr(bb, "merge_and_unload"):
        model.backbone = bb.merge_and_unload()
        model.mcfg = model.mcfg.replace(lora_rank=0)
    return model
