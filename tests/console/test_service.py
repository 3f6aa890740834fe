"""The console as the cloud service serves it (``cloud_asgi()``: the BentoML app, in-process, on
SQLite): mounted under /console beside the device API, on the service's own store; a device's
sync and clip show up in the review queue; ``silencio cloud add-user`` / ``revoke-user``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import MINI, cloud_asgi
from tests.console.world import clip_audio


def silencio(*args: str, home) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    env = {**os.environ, "SILENCIO_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "silencio", "cloud", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_add_user_and_revoke_user_commands(tmp_path, monkeypatch):
    out = silencio("add-user", "ana", "--role", "reviewer", home=tmp_path)
    assert out.returncode == 0, out.stderr
    token = re.search(r"login token \(shown once, only its hash is stored\): (\S+)", out.stdout).group(1)
    assert "reviewer 'ana' added to" in out.stdout and "/console/login" in out.stdout
    from cloud.settings import CloudSettings
    from cloud.store import UserRole, open_store

    monkeypatch.setenv("SILENCIO_HOME", str(tmp_path))
    st = open_store(CloudSettings())
    assert st.authenticate_user(token).role is UserRole.REVIEWER
    st.close()
    again = silencio("add-user", "ana", "--role", "admin", home=tmp_path)
    assert again.returncode != 0 and "exists" in again.stderr and "Traceback" not in again.stderr
    bad = silencio("add-user", "x", "--role", "device", home=tmp_path)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    assert silencio("add-user", "x", home=tmp_path).returncode == 2  # --role is required
    out = silencio("revoke-user", "ana", home=tmp_path)
    assert out.returncode == 0 and "revoked" in out.stdout
    st = open_store(CloudSettings())
    with pytest.raises(Exception, match="revoked"):
        st.authenticate_user(token)
    st.close()
    missing = silencio("revoke-user", "nobody", home=tmp_path)
    assert missing.returncode != 0 and "no console user" in missing.stderr
    assert "add-user" in silencio("--help", home=tmp_path).stdout


@pytest.fixture
def service(tmp_path, monkeypatch):
    """The service on a fresh SQLite store under a temporary home: a reviewer and a device."""
    from starlette.testclient import TestClient

    from cloud.settings import CloudSettings
    from cloud.store import open_store

    monkeypatch.setenv("SILENCIO_HOME", str(tmp_path))
    monkeypatch.setenv("SILENCIO_CLOUD_TAXONOMY", str(MINI / "taxonomy.csv"))
    st = open_store(CloudSettings())
    tokens = {"ana": st.add_user("ana", "reviewer"), "device": st.add_device("guide-1")}
    st.close()
    with TestClient(cloud_asgi(), raise_server_exceptions=False, follow_redirects=False) as c:
        yield c, tokens


def test_console_is_mounted_in_the_service(service):
    c, tokens = service
    r = c.get("/console")
    assert r.status_code == 308 and r.headers["location"] == "/console/"
    r = c.get("/console/")
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
    r = c.get("/console/login")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "content-security-policy" in r.headers
    r = c.get("/console/no/such/page")  # the console's own HTML 404, not the API's JSON shape
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    r = c.get("/console/static/console.js")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    # the device API keeps its JSON error shape; a console user's token is not a device token
    r = c.post(
        "/v1/sync", json={"tours": [], "detections": []}, headers={"authorization": f"Bearer {tokens['ana']}"}
    )
    assert r.status_code == 401 and r.json()["status"] == 401
    # a device token does not open the console
    page = c.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = c.post("/console/login", data={"csrf": csrf, "token": tokens["device"]})
    assert r.status_code == 401


@pytest.mark.slow
def test_a_synced_clip_reaches_the_review_queue_and_the_verdict_the_store(service):
    """A device syncs a tour and a detection and uploads a clip (the ensemble confirms it); a
    reviewer signs in, sees it first in the queue with its spectrogram and audio, relabels it."""
    from cloud.settings import CloudSettings
    from cloud.store import ReviewVerdict, open_store

    c, tokens = service
    dev = {"authorization": f"Bearer {tokens['device']}"}
    t0 = datetime(2026, 3, 14, 6, 30, tzinfo=UTC)
    tour, det = str(uuid.uuid4()), str(uuid.uuid4())
    r = c.post(
        "/v1/sync",
        headers=dev,
        json={
            "tours": [
                {
                    "uuid": tour,
                    "guide": "Ana",
                    "started_at": t0.isoformat(),
                    "latitude": 6.77,
                    "longitude": -74.2,
                }
            ],
            "detections": [
                {
                    "uuid": det,
                    "tour_uuid": tour,
                    "species_code": "grekis",
                    "start_time": t0.isoformat(),
                    "end_time": (t0 + timedelta(seconds=3)).isoformat(),
                    "confidence": 0.6,
                    "band": "medium",
                    "model_version": "student 1",
                }
            ],
        },
    )
    assert r.status_code == 200 and r.json()["accepted"] == [tour, det]
    audio = clip_audio(8.0)
    meta = {
        "uuid": str(uuid.uuid4()),
        "tour_uuid": tour,
        "detection_uuid": det,
        "reason": "uncertain",
        "sha256": hashlib.sha256(audio).hexdigest(),
        "bytes": len(audio),
        "recorded_at": t0.isoformat(),
        "edge_top": [{"code": "grekis", "probability": 0.6}],
    }
    r = c.post("/v1/clips", headers=dev, files={"meta": (None, json.dumps(meta)), "audio": ("c.ogg", audio)})
    assert r.status_code == 200, r.text
    page = c.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = c.post("/console/login", data={"csrf": csrf, "token": tokens["ana"], "next": "/console/review"})
    assert r.status_code == 303 and r.headers["location"] == "/console/review"
    html = c.get("/console/review").text
    assert f'data-clip="{meta["uuid"]}"' in html and "Pitangus sulphuratus" in html
    assert c.get(f"/console/clips/{meta['uuid']}/spectrogram.png").content[:4] == b"\x89PNG"
    assert c.get(f"/console/clips/{meta['uuid']}/audio").content == audio
    csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    r = c.post(
        f"/console/review/{meta['uuid']}", data={"csrf": csrf, "verdict": "relabel", "species_code": "amekes"}
    )
    assert r.status_code == 303
    st = open_store(CloudSettings())
    (v,) = st.review_verdicts()
    assert (v.clip_uuid, v.reviewer, v.verdict, v.species_code) == (
        meta["uuid"],
        "ana",
        ReviewVerdict.RELABEL,
        "amekes",
    )
    st.close()
    tour_page = c.get(f"/console/tours/{tour}").text
    assert "relabelled" in tour_page and "by ana" in tour_page
