"""``bentoml build`` works offline from the repository and packs the service and its packages."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO


def test_bentoml_build_offline(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "PIP_NO_INDEX": "1"}
    bentoml = [sys.executable, "-m", "bentoml"]
    out = subprocess.run(
        [*bentoml, "build", "-f", "bentos/bentofile.yaml", "."],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    bento = next(p for p in (tmp_path / "bentos" / "silencio").iterdir() if p.name != "latest")
    src = bento / "src"
    for f in (
        "bentos/service.py",
        "cloud/service.py",
        "cloud/store/__init__.py",
        "cloud/store/postgres.py",
        "shared_features/package.py",
        "cloud/console/app.py",
        "cloud/console/templates/review.html",  # the console's templates and static files travel too
        "cloud/console/static/console.js",
    ):
        assert (src / f).exists(), f
    assert (
        not (src / "tests").exists() and not (src / "training").exists()
    )  # serving carries no training code
    reqs = bento / "env" / "python" / "requirements.txt"
    assert "bentoml" in reqs.read_text() and "torch" not in reqs.read_text()
    assert "psycopg" in reqs.read_text()  # replicas over PostgreSQL
