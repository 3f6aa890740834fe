"""The torch log-mel: batched, on any device, for GPU training. Import it lazily; it needs the
``train`` extra. It uses the numpy path's filterbank and window (the same arrays), no centre
padding, and the same log / top_db / normalisation; agreement with :func:`shared_features.mel.log_mel`
is tested on real clips (max abs difference ≤ 2e-3 on standardised features, float32).
"""

from __future__ import annotations

try:
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - exercised in the edge-only install test
    raise ImportError("shared_features.mel_torch needs torch: pip install 'silencio[train]'") from exc

from shared_features.config import DEFAULT, FeatureConfig
from shared_features.mel import hann_window, mel_filterbank


class TorchLogMel(nn.Module):
    """``[batch, window_samples]`` float → ``[batch, n_mels, n_frames]`` float32 features."""

    def __init__(self, cfg: FeatureConfig = DEFAULT) -> None:
        super().__init__()
        self.cfg = cfg
        self.fb: torch.Tensor
        self.window: torch.Tensor
        self.register_buffer("fb", torch.from_numpy(mel_filterbank(cfg).copy()), persistent=False)
        self.register_buffer("window", torch.from_numpy(hann_window(cfg).copy()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.shape[-1] != cfg.window_samples:
            raise ValueError(f"expected windows of {cfg.window_samples} samples, got {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            spec = torch.stft(
                x,
                n_fft=cfg.n_fft,
                hop_length=cfg.hop_length,
                win_length=cfg.n_fft,
                window=self.window,
                center=False,
                return_complex=True,
            )
            power = spec.real.square() + spec.imag.square()
            if cfg.power == 1.0:
                power = power.sqrt()
            mel = torch.matmul(self.fb, power)  # [B, n_mels, n_frames]
            if cfg.log_scale == "db":
                mel = 10.0 * torch.log10(torch.clamp(mel, min=cfg.amin))
                if cfg.top_db is not None:
                    peak = mel.amax(dim=(-2, -1), keepdim=True)
                    mel = torch.maximum(mel, peak - cfg.top_db)
            if cfg.normalization == "standardize":
                mean = mel.mean(dim=(-2, -1), keepdim=True)
                std = mel.std(dim=(-2, -1), keepdim=True, unbiased=False)
                mel = (mel - mean) / (std + cfg.norm_eps)
        return mel
