"""Shared fixtures. Paths come from ``Path(__file__)``, never the working directory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MINI = SHARED_DATA / "birdclef2025_mini"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA}: the shared/ folder must sit beside the repo")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mini(shared_data: Path) -> Path:
    return shared_data / "birdclef2025_mini"


@pytest.fixture(autouse=True)
def _silencio_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("silencio_home")
    monkeypatch.setenv("SILENCIO_HOME", str(home))
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:  # torch is optional (edge-only installs)
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def tone(
    seconds: float, sr: int = 32_000, freq: float = 3000.0, amp: float = 0.3, seed: int = 0
) -> np.ndarray:
    """Seeded synthetic test audio: a tone plus a little noise, ``[n] float32``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


_CLOUD_APP = None


def cloud_asgi():  # type: ignore[no-untyped-def]
    """The BentoML service's ASGI app, built once per process: BentoML registers its Prometheus
    metrics when the app is built, and a second build in one process would register them twice.
    Each TestClient context still starts a fresh service (reading SILENCIO_* at startup)."""
    global _CLOUD_APP
    if _CLOUD_APP is None:
        from bentos.service import Silencio

        _CLOUD_APP = Silencio.to_asgi()
    return _CLOUD_APP


def tiny_edge_package(out: Path, labels, *, version: str, seed: int = 0, val_roc_auc: float = 0.5) -> Path:  # type: ignore[no-untyped-def]
    """An ONNX fp32 edge package of an *untrained* tiny student (MobileNetV3-Small 0.5, 2× pooled
    input): the shape of a release, for tests of the plumbing around it — no accuracy implied."""
    import torch

    from training.export import PublishThresholds, export_edge
    from training.models import build_model, member_config, save_checkpoint

    torch.manual_seed(seed)
    m = build_model(
        member_config("student", timm_name="mobilenetv3_small_050", input_downsample=2), len(labels)
    )
    out.mkdir(parents=True, exist_ok=True)
    ckpt = save_checkpoint(out / "student.pt", m.eval(), labels, metrics={"best_val_roc_auc": val_roc_auc})
    feats = np.random.default_rng(seed).standard_normal((4, 128, 316)).astype(np.float32)
    export_edge(
        ckpt,
        out,
        parity=feats[:1],
        calibration=feats,
        check=feats,
        check_targets=None,
        formats=("onnx-fp32",),
        thresholds=PublishThresholds(0, 1),
        version=version,
    )
    return out / "onnx-fp32"
