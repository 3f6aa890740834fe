"""16-bit PCM windows (the GPU loader's format): half the bytes, the same features within PCM
quantisation."""

from __future__ import annotations

import torch

from shared_features import DEFAULT
from training.data import from_audio
from training.models import build_model, member_config

from .conftest import TINY


def test_int16_windows_give_the_float_features(synth_dir):
    f32 = from_audio(synth_dir, DEFAULT, soundscapes=False)
    i16 = from_audio(synth_dir, DEFAULT, soundscapes=False, int16=True)
    xa, ya = f32.train[3]
    xb, yb = i16.train[3]
    assert xb.dtype == torch.int16 and xa.dtype == torch.float32 and torch.equal(ya, yb)
    assert (xb.float() / 32768 - xa).abs().max() <= 1 / 32768
    model = build_model(member_config("resnet50", **TINY["resnet50"]), len(f32.labels)).eval()
    fa, fb = model.features(xa[None]), model.features(xb[None])
    assert (fa - fb).abs().max() < 0.05 and torch.allclose(fa.mean(), fb.mean(), atol=1e-3)
