from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.console.world import World, build


@pytest.fixture
def world(tmp_path: Path) -> World:
    from cloud.store import MemoryCloudStore

    return build(MemoryCloudStore(), tmp_path / "home")


def mounted(console):  # type: ignore[no-untyped-def]
    """The console app under /console, as the service mounts it."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    return Starlette(routes=[Mount("/console", console.app)])


@pytest.fixture
def console(world: World):  # type: ignore[no-untyped-def]
    from cloud.console import Console, ConsoleDeps, ConsoleSettings

    return Console(ConsoleDeps.from_taxonomy(world.store, world.home), ConsoleSettings())


@pytest.fixture
def client(console):  # type: ignore[no-untyped-def]
    from starlette.testclient import TestClient

    with TestClient(mounted(console), base_url="http://testserver", follow_redirects=False) as c:
        yield c


def login(client, token: str, next_url: str = "") -> str:  # type: ignore[no-untyped-def]
    """Sign in through the login form; returns the session's CSRF token (from a page's form)."""
    page = client.get("/console/login")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = client.post("/console/login", data={"csrf": csrf, "token": token, "next": next_url})
    assert r.status_code == 303, r.text[:500]
    return session_csrf(client)


def session_csrf(client) -> str:  # type: ignore[no-untyped-def]
    page = client.get("/console/exports")
    assert page.status_code == 200, page.text[:300]
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
