"""Members: build, forward, checkpoint round trip, fingerprint refusal, LoRA, SED outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared_features import DEFAULT, LabelSpace, Species, log_mel
from shared_features.errors import FingerprintMismatchError
from training.errors import TrainingError
from training.models import build_model, load_checkpoint, member_config, save_checkpoint
from training.models.factory import merge_lora
from training.models.sed import Cnn14SED

from .conftest import TINY

LABELS = LabelSpace(Species(f"sp{i}", f"Genus sp{i}", f"Species {i}", "Aves") for i in range(5))


@pytest.mark.parametrize("member", sorted(TINY))
def test_forward_on_features_and_waveforms(member):
    model = build_model(member_config(member, **TINY[member]), len(LABELS)).eval()
    x = np.random.default_rng(0).standard_normal((2, DEFAULT.window_samples)).astype(np.float32) * 0.1
    with torch.no_grad():
        from_wave = model(torch.from_numpy(x))
        from_feats = model(torch.from_numpy(log_mel(x)))
    assert from_wave.shape == (2, 5)
    # the torch front end is the shared recipe: same logits from waveforms and numpy features
    assert torch.allclose(from_wave, from_feats, atol=1e-3)


def test_real_resnet50_shape():
    m = build_model(member_config("resnet50"), 206)
    assert sum(p.numel() for p in m.parameters()) > 23e6  # a real ResNet-50
    assert m.backbone.conv1.in_channels == 1


def test_checkpoint_roundtrip_and_fingerprint_refusal(tmp_path):
    model = build_model(member_config("resnet50", **TINY["resnet50"]), len(LABELS)).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, LABELS, metrics={"best_val_roc_auc": 0.9})
    again, labels, blob = load_checkpoint(path)
    assert labels == LABELS and blob["feature_config"]["fingerprint"] == DEFAULT.fingerprint()
    x = torch.randn(1, 128, 316)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    blob["feature_config"]["n_mels"] = 64  # made with other features than the code computes
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(FingerprintMismatchError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(TrainingError, match="not a silencio checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_lora_needs_base_and_trains_adapters_only(tmp_path):
    with pytest.raises(TrainingError, match="base checkpoint"):
        build_model(member_config("efficientnet_b0_lora", **TINY["efficientnet_b0"]), 5)
    base = build_model(member_config("efficientnet_b0", **TINY["efficientnet_b0"]), len(LABELS))
    ckpt = save_checkpoint(tmp_path / "base.pt", base, LABELS)
    lora = build_model(
        member_config("efficientnet_b0_lora", base_checkpoint=str(ckpt), **TINY["efficientnet_b0"]),
        len(LABELS),
    )
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    assert not any("conv_dw" in n for n in trainable)  # never the depthwise convolutions
    x = torch.randn(2, 128, 316)
    lora.eval()
    with torch.no_grad():
        before = lora(x)
    merged = merge_lora(lora).eval()
    with torch.no_grad():
        assert torch.allclose(before, merged(x), atol=1e-5)
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def test_imagenet_style_base_is_adapted_to_one_channel(tmp_path):
    import timm

    imagenet_like = timm.create_model("efficientnet_b0", pretrained=False, num_classes=1000)
    torch.save(imagenet_like.state_dict(), tmp_path / "imagenet.pth")
    m = build_model(member_config("efficientnet_b0", base_checkpoint=str(tmp_path / "imagenet.pth")), 5)
    w3 = imagenet_like.conv_stem.weight
    assert torch.allclose(m.backbone.conv_stem.weight, w3.sum(dim=1, keepdim=True))


def test_sed_clip_and_frame_outputs(tmp_path):
    sed = Cnn14SED(n_mels=64, n_classes=5, width=64).eval()
    x = torch.randn(2, 1, 64, 501)
    with torch.no_grad():
        clip, frames = sed(x), sed.framewise(x)
    assert clip.shape == (2, 5) and frames.shape[0] == 2 and frames.shape[2] == 5 and frames.shape[1] > 10
    # a PANNs-layout checkpoint (backbone keys of CNN14) loads into the backbone
    panns = {k: v for k, v in sed.state_dict().items() if not k.startswith("att_block")}
    panns["fc_audioset.weight"] = torch.zeros(527, 2048)
    torch.save({"model": panns}, tmp_path / "Cnn14.pth")
    other = Cnn14SED(64, 5, 64)
    report = other.load_panns(str(tmp_path / "Cnn14.pth"))
    assert "fc_audioset.weight" in report["skipped"] and "conv_block6.conv2.weight" in report["loaded"]
    assert torch.equal(other.conv_block6.conv2.weight, sed.conv_block6.conv2.weight)
