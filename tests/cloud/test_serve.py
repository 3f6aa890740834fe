"""A real ``silencio cloud serve`` (``bentoml serve``) on 127.0.0.1, called with httpx and a real
recording; its Prometheus metrics carry the service's own counters."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import MINI, REPO

from .conftest import auth, detection, tour


@pytest.mark.timeout(300)
def test_real_server_identifies_a_real_recording_and_ingests(tmp_path):
    from cloud.store import CloudStore

    home = tmp_path / "home"
    token = CloudStore(home / "cloud" / "cloud.db").add_device("dev")
    from silencio.demo import _free_port

    port = _free_port()
    env = {**os.environ, "SILENCIO_HOME": str(home), "BENTOML_HOME": str(tmp_path / "bentoml")}
    cmd = [
        sys.executable,
        "-m",
        "silencio",
        "cloud",
        "serve",
        "--port",
        str(port),
        "--taxonomy",
        str(MINI / "taxonomy.csv"),
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"server exited: {proc.stdout.read().decode()[-3000:]}")
            time.sleep(1)
        else:
            pytest.fail("server not ready within 180 s")
        audio = (MINI / "train_soundscapes" / "H02_20230420_074000.ogg").read_bytes()
        r = httpx.post(
            f"{base}/identify",
            files={"audio": ("s.ogg", audio, "audio/ogg")},
            data={"threshold": "0"},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["windows"]) == 12 and r.json()["windows"][0]["species"][0]["scientific_name"]
        t = tour()
        r = httpx.post(
            f"{base}/v1/sync",
            json={"tours": [t], "detections": [detection(t["uuid"])]},
            headers=auth(token),
            timeout=30,
        )
        assert r.status_code == 200 and len(r.json()["accepted"]) == 2
        assert httpx.post(f"{base}/v1/identify", content=b"not audio", timeout=30).status_code == 415
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert "silencio_detections_ingested" in metrics
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    from silencio.demo import _stop as stop_group

    stop_group(proc)
