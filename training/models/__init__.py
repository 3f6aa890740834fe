"""Ensemble members: configs, builders and the checkpoint format. Needs the ``train`` extra."""

from training.models.checkpoint import load_checkpoint, save_checkpoint
from training.models.config import MEMBERS, ModelConfig, member_config
from training.models.factory import AudioClassifier, build_model

__all__ = [
    "MEMBERS",
    "AudioClassifier",
    "ModelConfig",
    "build_model",
    "load_checkpoint",
    "member_config",
    "save_checkpoint",
]
