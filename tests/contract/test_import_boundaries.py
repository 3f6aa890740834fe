"""Package boundaries: shared_features and edge import without torch (the edge install has none),
and every module keeps the architecture's import rules (``RULES``, read from the source with
``ast``: shared_features imports nothing of ours; edge never cloud, training, bentos or torch; cloud
never bentos or edge, and training only in ``cloud/loop.py``; training never edge or cloud)."""

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


# ---------------------------------------------------------------------------------- the architecture's rules
# Every module's imports, read with ``ast`` (module level and inside functions, ``import x`` and
# ``from x import y``, relative imports resolved), checked against the package table of
# ARCHITECTURE.md. A lazy import inside a function counts: it runs on the device all the same.
OURS = ("shared_features", "training", "cloud", "bentos", "edge", "silencio")
HEAVY = ("torch", "torchvision", "timm", "peft", "mlflow", "ray", "bentoml")

#: package -> (names it may never import, {module: names that module alone may import})
RULES: dict[str, tuple[frozenset[str], dict[str, frozenset[str]]]] = {
    # features import nothing of ours (the torch path is allowed: shared_features.mel_torch)
    "shared_features": (frozenset({"training", "cloud", "bentos", "edge", "silencio"}), {}),
    # the device installs only the edge extra: no cloud, training, bentos, nor their libraries
    "edge": (frozenset({"cloud", "training", "bentos", "silencio", *HEAVY}), {}),
    # the cloud is plain Python behind BentoML: no bentos, no bentoml, no edge; training only in the
    # loop's commands (cloud/loop.py)
    "cloud": (
        frozenset({"bentos", "bentoml", "edge", "silencio", "training"}),
        {"cloud.loop": frozenset({"training"})},
    ),
    "training": (frozenset({"edge", "cloud", "bentos", "silencio"}), {}),
    "bentos": (frozenset({"edge", "training", "silencio"}), {}),
}


def module_name(path: Path, root: Path = REPO) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_names(path: Path, root: Path = REPO) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in the file, wherever it stands: ``import x``,
    ``from x import y``, relative imports (resolved), ``importlib.import_module("x")``."""
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            out.append((node.lineno, target.split(".")[0]))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                out.append((node.lineno, node.args[0].value.split(".")[0]))
    return out


def violations(root: Path = REPO) -> list[str]:
    found = []
    for package, (never, allowed) in RULES.items():
        for path in sorted((root / package).rglob("*.py")):
            mod = module_name(path, root)
            extra = next((n for m, n in allowed.items() if mod == m or mod.startswith(m + ".")), frozenset())
            for line, name in sorted(imported_names(path, root)):
                if name in never and name not in extra:
                    found.append(f"{path.relative_to(root)}:{line} imports {name}")
    return found


def test_every_module_keeps_the_architectures_import_rules():
    assert violations() == []


def test_the_rules_catch_lazy_relative_and_dynamic_imports(tmp_path):
    """The checker itself: a violation at any depth, in any spelling, is found; an allowed one not."""
    for d in ("edge", "cloud", "shared_features"):
        (tmp_path / d).mkdir()
    (tmp_path / "edge" / "ok.py").write_text("import numpy\nfrom shared_features import DEFAULT\n")
    (tmp_path / "edge" / "bad.py").write_text(
        "import os\n\ndef f():\n    import torch\n    from cloud.service import Cloud\n"
        "    importlib.import_module('training.cli')\n    from ..bentos import service\n"
    )
    (tmp_path / "shared_features" / "x.py").write_text("from . import mel\nimport edge.sync\n")
    (tmp_path / "cloud" / "cli.py").write_text("from bentos import server\n")
    (tmp_path / "cloud" / "loop.py").write_text("from training.pipeline import gate\n")  # allowed there
    assert violations(tmp_path) == [
        "shared_features/x.py:2 imports edge",
        "edge/bad.py:4 imports torch",
        "edge/bad.py:5 imports cloud",
        "edge/bad.py:6 imports training",
        "edge/bad.py:7 imports bentos",
        "cloud/cli.py:1 imports bentos",
    ]
