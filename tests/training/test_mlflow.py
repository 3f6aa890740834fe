"""MLflow for real: the embedded SQLite store, and a real `mlflow server` on 127.0.0.1 that a
training run logs to, with the registry aliases and the production promotion rule."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from training.data import from_cache
from training.errors import TrainingError
from training.loop import TrainConfig, fit
from training.models import member_config
from training.tracking import MLflowTracker, resolve_model_uri, set_alias, tracking_uri

from .conftest import TINY


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def mlflow_server(tmp_path, monkeypatch):
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise RuntimeError("mlflow server did not start in 120 s")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def _train(tmp_path, synth_cache, name: str, epochs: int, lr: float):
    tracker = MLflowTracker("test-members", run_name=name, system_metrics=False)
    res = fit(
        member_config("resnet50", **TINY["resnet50"]),
        TrainConfig(epochs=epochs, batch_size=16, lr=lr),
        from_cache(synth_cache),
        tmp_path / name,
        tracker=tracker,
        progress=False,
    )
    tracker.end()
    return res


def test_embedded_default_is_sqlite_under_home(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("SILENCIO_HOME", str(tmp_path))
    assert tracking_uri() == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"


def test_run_metrics_and_aliases_through_a_real_server(tmp_path, synth_cache, mlflow_server):
    from mlflow import MlflowClient

    good = _train(tmp_path, synth_cache, "good", epochs=3, lr=3e-3)
    c = MlflowClient(mlflow_server)
    run = c.get_run(good.run_id)
    assert run.data.params["feature_fingerprint"].startswith("fv1-")
    assert "dataset_fingerprint" in run.data.params and run.data.tags["git_commit"]
    hist = c.get_metric_history(good.run_id, "val_roc_auc")
    assert [m.step for m in hist] == [1, 2, 3]
    assert "soundscape_macro_roc_auc" in run.data.metrics
    arts = {a.path for a in c.list_artifacts(good.run_id)}
    assert {"model", "report", "config.json"} <= arts
    mv = c.get_model_version_by_alias("silencio-resnet50", "candidate")
    assert mv.run_id == good.run_id
    set_alias("silencio-resnet50", mv.version, "production")
    # the registered model downloads and loads through the server
    ckpt = resolve_model_uri("models:/silencio-resnet50@production")
    from training.models import load_checkpoint

    load_checkpoint(ckpt)

    worse = _train(tmp_path, synth_cache, "worse", epochs=1, lr=1e-6)
    v2 = c.get_model_version_by_alias("silencio-resnet50", "candidate")
    assert v2.run_id == worse.run_id
    if worse.best_val_roc_auc < good.best_val_roc_auc:
        with pytest.raises(TrainingError, match="below production"):
            set_alias("silencio-resnet50", v2.version, "production")
    set_alias("silencio-resnet50", v2.version, "production", force=True)
    assert c.get_model_version_by_alias("silencio-resnet50", "production").version == v2.version
