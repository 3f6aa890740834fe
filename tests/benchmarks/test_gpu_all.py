"""``benchmarks/gpu_all.sh`` in its tiny CPU mode, with the packages the GPU image lacks hidden:
the script the lead runs on a GPU machine cannot fail there for a typo or a missing module."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gpu_all_tiny_runs_on_cpu_without_the_gpu_images_missing_packages(tmp_path):
    pytest.importorskip("torch")
    env = {
        **os.environ,
        "GPU_ALL_TINY": "1",
        "GPU_ALL_IMAGE_CHECK": "1",
        "PYTHON": sys.executable,
        "OUT": str(tmp_path / "out"),
    }
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_all.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=580,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "cache → GPU → train step" in out and "int16 gather" in out  # (a)'s table
    assert "parity with the CPU ONNX package" in out and "absent from the GPU image" in out  # (b)
    for n in (1, 8, 32):
        assert f"| CNN members on cpu | {n} " in out
    assert (tmp_path / "out" / "gpu_all.txt").read_text().count("|") > 20
    assert (tmp_path / "out" / "gpu_serving.json").exists()
