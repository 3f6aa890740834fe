"""Waveform-domain augmentations for training straight from audio (``[B, samples]`` batches on the
training device). Focal training clips are dense with calls of one species; soundscapes are not:
calls are partial, faint, overlapping, and many windows hold no call at all. These augmentations
close that gap without touching any evaluation data:

* ``noise``: add coloured noise (spectral slope from white to brown) at a random SNR;
* ``crop``: keep a random 0.5–5 s span of the window and replace the rest with coloured noise at
  the window's level, so partial calls are seen (the label stays: the call is still there);
* ``empty``: replace an example with coloured noise only and an all-zero target, so that a window
  without any call is a negative example.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WaveAugConfig:
    noise_prob: float = 0.5
    snr_db: tuple[float, float] = (0.0, 20.0)
    crop_prob: float = 0.4
    crop_seconds: tuple[float, float] = (0.5, 5.0)
    empty_prob: float = 0.08
    sample_rate: int = 32_000


def coloured_noise(shape: tuple[int, int], gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """``[B, n]`` unit-RMS noise, each row with a random spectral slope (1/f^α, α ∈ [0, 2])."""
    b, n = shape
    white = torch.randn(b, n, generator=gen).to(device)
    spec = torch.fft.rfft(white, dim=1)
    f = torch.arange(spec.shape[1], device=device).clamp(min=1).float()
    alpha = (torch.rand(b, 1, generator=gen) * 2.0).to(device)
    x = torch.fft.irfft(spec / f[None, :] ** (alpha / 2), n=n, dim=1)
    return x / (x.pow(2).mean(dim=1, keepdim=True).sqrt() + 1e-8)


def augment_waveforms(
    x: torch.Tensor, y: torch.Tensor, cfg: WaveAugConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    b, n = x.shape
    dev = x.device
    rms = x.pow(2).mean(dim=1, keepdim=True).sqrt() + 1e-6
    x, y = x.clone(), y.clone()

    def pick(p: float) -> torch.Tensor:
        return (torch.rand(b, generator=gen) < p).to(dev)

    crop = pick(cfg.crop_prob)
    if crop.any():
        lo, hi = (int(s * cfg.sample_rate) for s in cfg.crop_seconds)
        length = torch.randint(lo, min(hi, n) + 1, (b,), generator=gen).to(dev)
        start = (torch.rand(b, generator=gen).to(dev) * (n - length).clamp(min=0)).long()
        idx = torch.arange(n, device=dev)[None]
        keep = (idx >= start[:, None]) & (idx < (start + length)[:, None])
        fill = coloured_noise((b, n), gen, dev) * rms * 10 ** (-torch.rand(b, 1, generator=gen).to(dev) * 1.5)
        x = torch.where(crop[:, None] & ~keep, fill, x)
    noise = pick(cfg.noise_prob)
    if noise.any():
        snr = cfg.snr_db[0] + (cfg.snr_db[1] - cfg.snr_db[0]) * torch.rand(b, 1, generator=gen).to(dev)
        x = x + noise[:, None] * coloured_noise((b, n), gen, dev) * rms * 10 ** (-snr / 20)
    empty = pick(cfg.empty_prob)
    if empty.any():
        level = rms * 10 ** (-torch.rand(b, 1, generator=gen).to(dev) * 2)
        x = torch.where(empty[:, None], coloured_noise((b, n), gen, dev) * level, x)
        y = torch.where(empty[:, None], torch.zeros_like(y), y)
    return x, y
