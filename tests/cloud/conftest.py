from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import MINI, cloud_asgi

SOUNDSCAPE = MINI / "train_soundscapes" / "H02_20230420_074000.ogg"


@pytest.fixture(scope="module")
def cloud_env(tmp_path_factory):
    """A cloud home with a device and an admin token, serving BirdNET only (no trained ensemble)."""
    from cloud.settings import CloudSettings
    from cloud.store import CloudStore

    home = tmp_path_factory.mktemp("cloud_home")
    mp = pytest.MonkeyPatch()
    mp.setenv("SILENCIO_HOME", str(home))
    mp.setenv("SILENCIO_CLOUD_TAXONOMY", str(MINI / "taxonomy.csv"))
    mp.setenv("SILENCIO_CLOUD_MAX_UPLOAD_MB", "3")
    mp.setenv("SILENCIO_CLOUD_MAX_CLIP_MB", "2")
    s = CloudSettings()
    store = CloudStore(s.db_path)
    env = {"home": home, "device": store.add_device("guide-device-1"), "other": store.add_device("device-2")}
    env["admin"] = store.add_device("admin", "admin")
    store.close()
    yield env
    mp.undo()


@pytest.fixture(scope="module")
def client(cloud_env):
    from starlette.testclient import TestClient

    with TestClient(cloud_asgi(), raise_server_exceptions=False) as c:
        yield c


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def now() -> str:
    return datetime.now(UTC).isoformat()


def tour(**kw) -> dict:
    return {"uuid": str(uuid.uuid4()), "guide": "Ana", "location": "El Silencio", "started_at": now(), **kw}


def detection(tour_uuid: str, code: str = "rutjac1", **kw) -> dict:
    return {
        "uuid": str(uuid.uuid4()),
        "tour_uuid": tour_uuid,
        "species_code": code,
        "start_time": now(),
        "end_time": now(),
        "confidence": 0.7,
        "band": "medium",
        "model_version": "test",
        **kw,
    }


def clip_meta(audio: bytes, **kw) -> str:
    meta = {
        "uuid": str(uuid.uuid4()),
        "sha256": hashlib.sha256(audio).hexdigest(),
        "bytes": len(audio),
        "reason": "uncertain",
        "recorded_at": now(),
        **kw,
    }
    return json.dumps(meta)


def real_clip(seconds: float = 10.0) -> bytes:
    """The first seconds of the real El Silencio soundscape as OGG bytes."""
    import io

    import soundfile as sf

    x, sr = sf.read(SOUNDSCAPE, dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, x[: int(seconds * sr)], sr, format="OGG", subtype="VORBIS")
    return buf.getvalue()


__all__ = ["Path", "auth", "clip_meta", "detection", "now", "real_clip", "tour"]


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL 16 server (the pgserver wheel) for the whole session; each test that needs
    a database creates its own with ``postgres.create_database(name)``. Its data directory is not
    under pytest's temporary root: pytest makes that root private (0700) whenever a session starts,
    and PostgreSQL runs as its own user when the tests run as root."""
    import shutil
    import tempfile

    from cloud.store.local_pg import LocalPostgres

    data = Path(tempfile.mkdtemp(prefix="silencio-pg-"))
    pg = LocalPostgres(data / "data", durable=False)  # throwaway data: no fsync
    pg.start()
    yield pg
    pg.stop()
    shutil.rmtree(data, ignore_errors=True)
