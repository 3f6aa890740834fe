"""CNN14-style sound-event detector: the PANNs CNN14 architecture (Kong et al. 2020) with the
attention pooling head of the PANNs SED models. Clip-level and frame-level outputs.

Parameter names follow PANNs (``bn0``, ``conv_block1..6``, ``fc1``) so a user-supplied PANNs CNN14
checkpoint (``Cnn14_mAP=0.431.pth``) loads into the backbone; the attention head is new.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, pool) if pool != (1, 1) else x


class AttBlock(nn.Module):
    """Attention pooling over time: clip = Σ_t softmax(att)_t · sigmoid(cla)_t."""

    def __init__(self, cin: int, n_classes: int) -> None:
        super().__init__()
        self.att = nn.Conv1d(cin, n_classes, 1)
        self.cla = nn.Conv1d(cin, n_classes, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        att = torch.softmax(torch.clamp(self.att(x), -10, 10), dim=-1)
        cla = torch.sigmoid(self.cla(x))
        return (att * cla).sum(dim=-1), cla  # [B, C], [B, C, T]


class Cnn14SED(nn.Module):
    """``[B, 1, n_mels, frames]`` log-mel → clip logits ``[B, C]``; :meth:`framewise` gives
    ``[B, frames', C]`` probabilities (frames' = frames / 32)."""

    def __init__(self, n_mels: int, n_classes: int, width: int = 64, drop_rate: float = 0.2) -> None:
        super().__init__()
        w = [width * m for m in (1, 2, 4, 8, 16, 32)]
        self.bn0 = nn.BatchNorm2d(n_mels)
        self.conv_block1 = ConvBlock(1, w[0])
        self.conv_block2 = ConvBlock(w[0], w[1])
        self.conv_block3 = ConvBlock(w[1], w[2])
        self.conv_block4 = ConvBlock(w[2], w[3])
        self.conv_block5 = ConvBlock(w[3], w[4])
        self.conv_block6 = ConvBlock(w[4], w[5])
        self.fc1 = nn.Linear(w[5], w[5])
        self.att_block = AttBlock(w[5], n_classes)
        self.drop_rate = drop_rate

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        # PANNs layout is [B, 1, time, mel]; ours is [B, 1, mel, time]
        x = x.transpose(2, 3)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        for i, blk in enumerate(
            (
                self.conv_block1,
                self.conv_block2,
                self.conv_block3,
                self.conv_block4,
                self.conv_block5,
                self.conv_block6,
            )
        ):
            x = blk(x, (2, 2) if i < 5 else (1, 1))
            x = F.dropout(x, 0.2 * (self.drop_rate > 0), self.training)
        x = x.mean(dim=3)  # over mel → [B, C, T']
        x = F.max_pool1d(x, 3, 1, 1) + F.avg_pool1d(x, 3, 1, 1)
        x = F.dropout(x, self.drop_rate, self.training)
        x = F.relu(self.fc1(x.transpose(1, 2))).transpose(1, 2)
        return F.dropout(x, self.drop_rate, self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clip, _ = self.att_block(self._features(x))
        clip = clip.clamp(1e-6, 1 - 1e-6)
        return torch.log(clip) - torch.log1p(-clip)  # logits, like the other members

    def framewise(self, x: torch.Tensor) -> torch.Tensor:
        _, cla = self.att_block(self._features(x))
        return cla.transpose(1, 2)

    def load_panns(self, path: str) -> dict[str, list[str]]:
        """Load a PANNs CNN14 checkpoint into the backbone; returns the loaded / skipped keys."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state)
        own = self.state_dict()
        ok = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not any(k.startswith("conv_block6") for k in ok):
            raise ValueError(
                f"{path}: no CNN14 conv_block weights of matching shape; "
                "is this a PANNs Cnn14 checkpoint (width 64, 64 mel bins)?"
            )
        self.load_state_dict(ok, strict=False)
        return {"loaded": sorted(ok), "skipped": sorted(set(state) - set(ok))}
