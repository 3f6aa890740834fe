"""``deploy/``: there is no Docker engine here, so the compose file is checked for what can be
checked without one — it parses, its services fit together (the image ``bentoml build`` names, the
settings its variables set exist, migrations run once before the replicas, the clip directory and
the home are shared volumes, MLflow has its own database and artifact volume, Ray only in its
profile), the variables it requires are in ``env.example``, and the PostgreSQL init script really
creates MLflow's role and database on a real PostgreSQL 16."""

from __future__ import annotations

import os
import re
import subprocess

import psycopg
import pytest
import yaml

from tests.conftest import REPO

DEPLOY = REPO / "deploy"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    return dict(env) if isinstance(env, dict) else dict(e.split("=", 1) for e in env)


def test_services_fit_together(compose):
    from cloud.settings import CloudSettings

    s = compose["services"]
    assert {"db", "mlflow", "migrate", "cloud", "lb", "ray-head"} <= set(s)
    bentofile = yaml.safe_load((REPO / "bentos" / "bentofile.yaml").read_text())
    for name in ("cloud", "migrate"):  # the image `bentoml containerize` tags
        assert s[name]["image"] == "${SILENCIO_IMAGE:-" + bentofile["name"] + ":latest}"
        env = env_of(s[name])
        for var in env:
            if var.startswith("SILENCIO_CLOUD_"):
                assert var[len("SILENCIO_CLOUD_") :].lower() in CloudSettings.model_fields, var
        assert (
            env["SILENCIO_CLOUD_DATABASE_URL"].startswith("postgresql://")
            and "@db:5432/silencio" in (env["SILENCIO_CLOUD_DATABASE_URL"])
        )
        assert env["SILENCIO_CLOUD_MIGRATE_ON_START"] == "false"  # the migrate job does it, once
    assert s["migrate"]["command"] == ["python", "-m", "cloud", "migrate"]
    assert (REPO / "cloud" / "__main__.py").is_file()  # the image has no `silencio` command
    assert s["migrate"]["working_dir"] == "/home/bentoml/bento/src"  # where the bento keeps cloud/
    assert s["cloud"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "ports" not in s["cloud"] and s["lb"]["ports"]  # replicas are reached through the balancer
    assert "replicas" in s["cloud"]["deploy"]
    vols = {v.split(":")[0]: v.split(":")[1] for v in s["cloud"]["volumes"]}
    env = env_of(s["cloud"])
    assert vols["clips"] == env["SILENCIO_CLOUD_CLIP_DIR"] and vols["silencio-home"] == env["SILENCIO_HOME"]
    assert {"clips", "silencio-home", "pgdata", "mlartifacts"} <= set(compose["volumes"])


def test_mlflow_has_its_own_database_and_artifacts(compose):
    m = compose["services"]["mlflow"]
    args = dict(a.split("=", 1) for a in m["command"] if a.startswith("--") and "=" in a)
    assert re.search(r"@db:5432/mlflow$", args["--backend-store-uri"])
    assert args["--artifacts-destination"] == "/mlartifacts" and "mlartifacts:/mlartifacts" in m["volumes"]
    assert "mlflow:5000" in args["--allowed-hosts"]  # the name the other containers call it by
    assert env_of(m)["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    pinned = re.search(r'"mlflow==([\d.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert f'"mlflow=={pinned}"' in (DEPLOY / "mlflow" / "Dockerfile").read_text()


def test_ray_head_is_an_optional_profile_of_the_installed_ray(compose):
    ray = compose["services"]["ray-head"]
    assert ray["profiles"] == ["ray"]
    assert all("profiles" not in v for k, v in compose["services"].items() if k != "ray-head")
    from importlib.metadata import version

    assert ray["image"].startswith(f"rayproject/ray:{version('ray')}-py311")


def test_required_variables_are_in_env_example(compose):
    text = (DEPLOY / "compose.yaml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = dict(
        line.split("=", 1)
        for line in (DEPLOY / "env.example").read_text().splitlines()
        if re.match(r"^\w+=", line)
    )
    assert required == {"SILENCIO_DB_PASSWORD", "MLFLOW_DB_PASSWORD"} and required <= set(example)


def test_nginx_balances_the_replicas_and_takes_uploads():
    from cloud.settings import CloudSettings

    conf = (DEPLOY / "nginx" / "silencio.conf").read_text()
    assert "http://cloud:3000" in conf and "listen 3000" in conf
    limit_mb = int(re.search(r"client_max_body_size (\d+)m;", conf).group(1))
    s = CloudSettings()
    assert limit_mb >= max(s.max_upload_mb, s.max_clip_mb)


def test_postgres_init_script_creates_mlflows_database(postgres):
    script = DEPLOY / "postgres" / "init-mlflow.sh"
    assert os.access(script, os.X_OK)
    info = psycopg.conninfo.conninfo_to_dict(postgres.url)
    pgbin = postgres.bin_dir
    env = {
        **os.environ,
        "PATH": f"{pgbin}:{os.environ['PATH']}",
        "PGHOST": info["host"],
        "POSTGRES_USER": "postgres",
        "POSTGRES_DB": "postgres",
        "MLFLOW_DB_PASSWORD": "it's s3cret",  # a quote in the password is quoted, not injected
    }
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    with psycopg.connect(postgres.url) as conn:
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'mlflow'"
        ).fetchone()
        assert owner == ("mlflow",)
        assert conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'mlflow'").fetchone() == (True,)
    without = {k: v for k, v in env.items() if k != "MLFLOW_DB_PASSWORD"}
    out = subprocess.run(["bash", str(script)], env=without, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "MLFLOW_DB_PASSWORD" in out.stderr
