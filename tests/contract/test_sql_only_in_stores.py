"""SQL lives only in the store modules: every other module calls the stores' named operations.

Parses every module of the project (``ast``, so comments and docstrings that merely mention a
keyword don't count) and fails on a string that is an SQL statement, or on a call of
``.execute``/``.executemany``/``.executescript``/``.query`` — the DB-API and sqlite-utils entry
points — outside the modules that own a database.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("shared_features", "training", "cloud", "bentos", "edge", "silencio")
#: the only modules that may speak SQL
STORES = (
    "shared_features/sqlite.py",  # the SQLite base both stores share (WAL, migrations)
    "cloud/store/",
    "edge/store.py",
)
STATEMENT = re.compile(
    r"^\s*(SELECT\s.+\sFROM\s|INSERT\s+(OR\s+\w+\s+)?INTO\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s"
    r"|CREATE\s+(UNIQUE\s+)?(TABLE|INDEX|VIEW|TRIGGER)\s|ALTER\s+TABLE\s|DROP\s+(TABLE|INDEX)\s"
    r"|PRAGMA\s+\w+|BEGIN(\s+(IMMEDIATE|DEFERRED|EXCLUSIVE|TRANSACTION))?\s*$)",
    re.S,
)
CALLS = {"execute", "executemany", "executescript", "query"}


def _modules() -> list[Path]:
    out = []
    for pkg in PACKAGES:
        for p in sorted((REPO / pkg).rglob("*.py")):
            rel = p.relative_to(REPO).as_posix()
            if not any(rel == s or (s.endswith("/") and rel.startswith(s)) for s in STORES):
                out.append(p)
    return out


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    in_fstrings = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in ast.walk(tree):
        if id(node) in in_fstrings:
            continue  # judged as part of its f-string
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and STATEMENT.match(node.value):
            found.append(f"line {node.lineno}: SQL statement {node.value.strip()[:60]!r}")
        elif isinstance(node, ast.JoinedStr):  # f-strings: their literal parts
            text = "".join(
                v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)
            )
            if STATEMENT.match(text):
                found.append(f"line {node.lineno}: SQL f-string {text.strip()[:60]!r}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CALLS:
            found.append(f"line {node.lineno}: .{node.func.attr}(…) call")
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_sql_outside_the_stores(path: Path) -> None:
    assert _violations(path) == [], f"{path.relative_to(REPO)} speaks SQL; add a named store operation"


def test_the_check_finds_sql(tmp_path: Path) -> None:
    """The check itself can fail: a module with a query and an execute call is caught."""
    p = tmp_path / "m.py"
    p.write_text(
        'def f(db, x):\n    db.execute(f"UPDATE tours SET x = {x}")\n'
        '    return "SELECT count(*) FROM detections WHERE 1"\n'
    )
    v = _violations(p)
    assert len(v) == 3, v
    q = tmp_path / "ok.py"
    q.write_text(
        '"""Update the open events with one window."""\nX = "Begin Time (s)"\nY = "select a species"\n'
    )
    assert _violations(q) == []
