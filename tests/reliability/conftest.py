"""Fixtures of the reliability tier: a real ``silencio cloud serve`` (BirdNET alone, the default
model) that this session starts and stops itself, with devices and an admin registered in its
store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud.replicas import ServeProcess, free_port
from tests.conftest import MINI, REPO
from tests.edge.conftest import edge_settings, labels  # noqa: F401 - the edge's fixtures, here too


@dataclass
class LiveCloud:
    server: ServeProcess
    home: Path
    devices: dict[str, str]  # name → token
    admin: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int:
        assert self.server.proc is not None
        return self.server.proc.pid


def register(home: Path, names: list[str]) -> tuple[dict[str, str], str]:
    """Devices ``names`` and one admin in the SQLite store of ``home``: their tokens."""
    from cloud.settings import CloudSettings
    from cloud.store import CloudStore

    store = CloudStore(CloudSettings(home=home).db_path)
    try:
        devices = {n: store.add_device(n) for n in names}
        admin = store.add_device("reliability-admin", "admin")
    finally:
        store.close()
    return devices, admin


def serve_env(home: Path) -> dict[str, str]:
    return {
        "SILENCIO_HOME": str(home),
        "BENTOML_HOME": str(home / "bentoml"),
        "SILENCIO_CLOUD_TAXONOMY": str(MINI / "taxonomy.csv"),
    }


@pytest.fixture(scope="session")
def live_cloud(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One served cloud for the fuzz and load tests of this session (they only add data)."""
    home = tmp_path_factory.mktemp("live_cloud")
    devices, admin = register(home, [f"load-{k}" for k in range(4)])
    server = ServeProcess(free_port(), serve_env(home), home / "serve.log", cwd=REPO)
    server.start()
    try:
        server.wait_ready(300)
        yield LiveCloud(server, home, devices, admin)
    finally:
        server.stop()
