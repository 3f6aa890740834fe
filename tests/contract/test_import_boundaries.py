"""Package boundaries: shared_features and edge import without torch (the edge install has none),
and shared_features imports nothing else of ours."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

BLOCK_TORCH = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ImportError('blocked for this test: ' + name)
sys.meta_path.insert(0, Block())
"""


def run(code: str, blocked: tuple[str, ...] = ("torch", "mlflow", "bentoml", "ray", "timm")) -> str:
    script = BLOCK_TORCH.format(blocked=set(blocked)) + code
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


EDGE_MODULES = [
    "edge.agent",
    "edge.analyze",
    "edge.capture",
    "edge.cli",
    "edge.detector",
    "edge.exports",
    "edge.recording",
    "edge.records",
    "edge.sampler",
    "edge.settings",
    "edge.speech",
    "edge.status",
    "edge.store",
    "edge.store_memory",
    "edge.sync",
    "edge.tui",
    "edge.updater",
    "shared_features.package",
]


@pytest.mark.parametrize("module", ["shared_features", "edge", "silencio.cli", *EDGE_MODULES])
def test_imports_without_torch(module):
    run(f"import {module}; import sys; assert 'torch' not in sys.modules")


def test_cli_help_without_heavy_libraries():
    out = run(
        "from silencio.cli import main\n"
        "import contextlib, io\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try: main(['--help'])\n"
        "    except SystemExit as e: assert e.code == 0\n"
        "print(buf.getvalue())"
    )
    assert "features" in out and "data" in out


def test_torch_path_says_which_extra():
    script = BLOCK_TORCH.format(blocked={"torch"}) + (
        "try:\n    import shared_features.mel_torch\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    ).stdout
    assert "silencio[train]" in out


def test_shared_features_imports_nothing_of_ours():
    out = run(
        "import shared_features, shared_features.streaming, shared_features.cli, sys\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'training','cloud','edge','bentos','silencio'}))"
    )
    assert out.strip() == "[]"
