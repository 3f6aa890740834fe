"""The console's security: no page, audio or download without a session; login with a reviewer's
or admin's token only (never a device's); the session cookie's flags; CSRF and origin on every
form; the per-client login limit; roles on every page and action."""

from __future__ import annotations

import re

import pytest

from tests.console.conftest import login, mounted, session_csrf

PAGES = [
    "/console/",
    "/console/review",
    "/console/tours",
    "/console/species",
    "/console/species/grekis",
    "/console/models",
    "/console/models/2/report/",
    "/console/models/1/confirm",
    "/console/exports",
]


def files(world) -> list[str]:
    clip = world.clips["disagree"]
    return [
        f"/console/clips/{clip}/audio",
        f"/console/clips/{clip}/spectrogram.png",
        "/console/models/2/report/roc.png",
        "/console/exports/download?format=csv&since=2026-03-01&until=2026-03-31",
    ]


def actions(world) -> list[tuple[str, dict[str, str]]]:
    clip = world.clips["disagree"]
    return [
        (f"/console/review/{clip}", {"verdict": "skip"}),
        (f"/console/clips/{clip}/pin", {"pinned": "1"}),
        ("/console/models/1/current", {"confirm": "1"}),
        ("/console/logout", {}),
    ]


def test_nothing_without_a_session(client, world):
    for path in PAGES + [f"/console/tours/{world.tours[0]}", f"/console/review/{world.clips['random']}"]:
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next="), path
    for path in files(world):  # audio, images and downloads: refused, not redirected
        r = client.get(path)
        assert r.status_code == 401 and "audio" not in r.headers["content-type"], path
        assert b"OggS" not in r.content and b"PNG" not in r.content[:8]
    for path, data in actions(world):
        assert client.post(path, data=data).status_code == 401, path
    assert world.store.review_verdicts() == [] and not world.store.clip(world.clips["disagree"]).pinned
    assert world.store.current_release().version == "2"
    r = client.get("/console/no/such/page")  # no hint of what exists without a session
    assert r.status_code == 404 and "no page" not in r.text
    r = client.get("/console/login")
    assert r.status_code == 200 and 'type="password"' in r.text and 'for="token"' in r.text


def test_login_cookie_session_and_logout(client, world):
    page = client.get("/console/login?next=/console/review")
    login_cookie = page.headers["set-cookie"]
    assert "httponly" in login_cookie.lower() and "samesite=strict" in login_cookie.lower()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = client.post(
        "/console/login", data={"csrf": csrf, "token": world.tokens["ana"], "next": "/console/review"}
    )
    assert r.status_code == 303 and r.headers["location"] == "/console/review"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("silencio_console="))
    flags = [f.strip().lower() for f in cookie.split(";")]
    assert "httponly" in flags and "samesite=strict" in flags and "path=/console/" in flags
    assert "max-age=28800" in flags and "secure" not in flags  # plain http in this test
    sid = cookie.split(";")[0].split("=", 1)[1]
    sess = world.store.session(sid)
    assert sess is not None and sess.user.name == "ana"
    assert client.get("/console/review").status_code == 200
    # an open redirect is refused: a "next" off the console lands on the overview
    client.cookies.clear()
    page = client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = client.post(
        "/console/login", data={"csrf": csrf, "token": world.tokens["ana"], "next": "//evil.example/x"}
    )
    assert r.headers["location"] == "/console/"
    # logout needs the CSRF token, ends the session in the store and clears the cookie
    token = session_csrf(client)
    sid2 = client.cookies.get("silencio_console")
    assert client.post("/console/logout", data={}).status_code == 403
    r = client.post("/console/logout", data={"csrf": token})
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert "max-age=0" in r.headers["set-cookie"].lower()
    assert world.store.session(sid2) is None
    client.cookies.set("silencio_console", sid2, path="/console/")
    assert client.get("/console/").status_code == 303  # the old cookie opens nothing


def _secure(set_cookie: str) -> bool:
    return "secure" in [f.strip().lower() for f in set_cookie.split(";")]


def test_secure_cookie_over_https_and_behind_a_proxy(world):
    from starlette.testclient import TestClient

    from cloud.console import Console, ConsoleDeps, ConsoleSettings

    def app(settings, proxies=""):
        return mounted(
            Console(ConsoleDeps.from_taxonomy(world.store, world.home, trusted_proxies=proxies), settings)
        )

    with TestClient(app(ConsoleSettings()), base_url="https://console.example", follow_redirects=False) as c:
        page = c.get("/console/login")
        assert _secure(page.headers["set-cookie"])
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        r = c.post("/console/login", data={"csrf": csrf, "token": world.tokens["bo"]})
        assert r.status_code == 303
        assert _secure(next(x for x in r.headers.get_list("set-cookie") if x.startswith("silencio_console=")))
        assert c.get("/console/").status_code == 200
    # behind a TLS-terminating proxy the service trusts (SILENCIO_CLOUD_TRUSTED_PROXIES), or forced:
    # Secure (the browser talks https); the same header from anyone else is ignored
    https = {"x-forwarded-proto": "https"}
    for settings, proxies, headers, secure in (
        (ConsoleSettings(), "testclient", https, True),
        (ConsoleSettings(), "10.0.0.0/8", https, False),
        (ConsoleSettings(), "", https, False),
        (ConsoleSettings(secure_cookies="always"), "", {}, True),
        (ConsoleSettings(secure_cookies="never"), "testclient", https, False),
    ):
        with TestClient(app(settings, proxies), base_url="http://internal", follow_redirects=False) as c:
            got = _secure(c.get("/console/login", headers=headers).headers["set-cookie"])
            assert got is secure, (settings, proxies)


def test_device_tokens_and_wrong_tokens_cannot_log_in(client, world):
    for token in (world.tokens["guide-device"], world.tokens["office-device"], "not-a-token", ""):
        page = client.get("/console/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        r = client.post("/console/login", data={"csrf": csrf, "token": token})
        assert r.status_code in (401, 400) if token == "" else r.status_code == 401
        assert "does not open the console" in r.text or token == ""
        assert not any(c.startswith("silencio_console=") for c in r.headers.get_list("set-cookie"))
        assert client.get("/console/").status_code == 303
    world.store.revoke_user("ana")
    page = client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    assert client.post("/console/login", data={"csrf": csrf, "token": world.tokens["ana"]}).status_code == 401


def test_a_revoked_user_loses_the_open_session(client, world):
    login(client, world.tokens["ana"])
    assert client.get("/console/").status_code == 200
    world.store.revoke_user("ana")
    assert client.get("/console/").status_code == 303


def test_login_form_needs_its_csrf_token_and_our_origin(client, world):
    client.get("/console/login")
    r = client.post("/console/login", data={"token": world.tokens["ana"]})  # no token in the form
    assert r.status_code == 403 and "expired" in r.text
    page = client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = client.post(
        "/console/login",
        data={"csrf": csrf, "token": world.tokens["ana"]},
        headers={"origin": "https://evil.example"},
    )
    assert r.status_code == 403
    client.cookies.clear()  # a form from another page load (no login cookie)
    r = client.post("/console/login", data={"csrf": csrf, "token": world.tokens["ana"]})
    assert r.status_code == 403 and not any(
        c.startswith("silencio_console=") for c in r.headers.get_list("set-cookie")
    )
    r = client.post(
        "/console/login", content=b"\x00garbage", headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert r.status_code == 403


def test_login_rate_limit_per_client(world):
    from starlette.testclient import TestClient

    from cloud.console import Console, ConsoleDeps, ConsoleSettings

    settings = ConsoleSettings(login_max_failures=3, login_window_s=60)
    # the test client is the trusted proxy: X-Forwarded-For names the client
    console = Console(
        ConsoleDeps.from_taxonomy(world.store, world.home, trusted_proxies="testclient"), settings
    )
    now = [1000.0]
    console.limiter.clock = lambda: now[0]
    app = mounted(console)

    def attempt(c, token: str, client_ip: str):
        page = c.get("/console/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        return c.post(
            "/console/login", data={"csrf": csrf, "token": token}, headers={"x-forwarded-for": client_ip}
        )

    with TestClient(app, follow_redirects=False) as c:
        for _ in range(3):
            assert attempt(c, "wrong", "10.0.0.1").status_code == 401
        r = attempt(c, world.tokens["ana"], "10.0.0.1")  # even the right token: refused for a while
        assert r.status_code == 429 and int(r.headers["retry-after"]) == 60 and "too many" in r.text
        assert attempt(c, world.tokens["ana"], "10.0.0.2").status_code == 303  # another client is not
        now[0] += 59
        assert attempt(c, world.tokens["ana"], "10.0.0.1").status_code == 429
        now[0] += 2
        assert attempt(c, world.tokens["ana"], "10.0.0.1").status_code == 303
        # failures spread beyond the window do not add up
        for _ in range(2):
            assert attempt(c, "wrong", "10.0.0.3").status_code == 401
        now[0] += 61
        assert attempt(c, "wrong", "10.0.0.3").status_code == 401
        assert attempt(c, world.tokens["bo"], "10.0.0.3").status_code == 303
    # an untrusted peer's X-Forwarded-For is ignored: its failures count against the peer itself
    plain = Console(ConsoleDeps.from_taxonomy(world.store, world.home), settings)
    with TestClient(mounted(plain), follow_redirects=False) as c:
        for ip in ("10.9.0.1", "10.9.0.2", "10.9.0.3"):
            assert attempt(c, "wrong", ip).status_code == 401
        assert attempt(c, world.tokens["ana"], "10.9.0.4").status_code == 429


@pytest.mark.parametrize("who", ["ana", "bo"])
def test_csrf_and_origin_on_every_action(client, world, who):
    csrf = login(client, world.tokens[who])
    for path, data in actions(world):
        for bad in ({}, {"csrf": "forged"}, {"csrf": csrf[:-1] + ("A" if csrf[-1] != "A" else "B")}):
            r = client.post(path, data={**data, **bad})
            assert r.status_code == 403, (path, bad)
        r = client.post(path, data={**data, "csrf": csrf}, headers={"origin": "https://evil.example"})
        admin_only = path.endswith("/current") and who == "ana"  # the role is checked first
        assert r.status_code == 403 and ("only an admin" if admin_only else "cross-site") in r.text, path
    assert world.store.review_verdicts() == [] and not world.store.clip(world.clips["disagree"]).pinned
    assert world.store.current_release().version == "2"
    assert client.get("/console/").status_code == 200  # still signed in


def test_roles_on_pages_and_actions(client, world):
    csrf = login(client, world.tokens["ana"])  # a reviewer
    for path in PAGES:
        r = client.get(path)
        expect = 403 if path.endswith("/confirm") else 200
        assert r.status_code == expect, path
    assert "only an admin" in client.get("/console/models/1/confirm").text
    r = client.post("/console/models/1/current", data={"csrf": csrf, "confirm": "1"})
    assert r.status_code == 403 and world.store.current_release().version == "2"
    models = client.get("/console/models").text
    assert "/confirm" not in models and "Only admins" in models
    # reviewers review, pin and export
    clip = world.clips["disagree"]
    assert client.post(f"/console/review/{clip}", data={"csrf": csrf, "verdict": "skip"}).status_code == 303
    assert client.post(f"/console/clips/{clip}/pin", data={"csrf": csrf, "pinned": "1"}).status_code == 303
    assert world.store.clip(clip).pinned
    # an admin may switch releases
    client.cookies.clear()
    csrf = login(client, world.tokens["bo"])
    assert client.get("/console/models/1/confirm").status_code == 200
    assert client.post("/console/models/1/current", data={"csrf": csrf, "confirm": "1"}).status_code == 303
    assert world.store.current_release().version == "1"


def test_security_headers(client, world):
    login(client, world.tokens["ana"])
    for path in ("/console/", "/console/login", f"/console/clips/{world.clips['random']}/audio"):
        h = client.get(path).headers
        assert (
            "script-src 'self'" in h["content-security-policy"]
            and "frame-ancestors 'none'" in h["content-security-policy"]
        )
        assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
    assert client.get("/console/").headers["cache-control"] == "no-store"


def test_only_hashes_are_stored_on_sqlite(tmp_path):
    """Tokens and session ids never reach the database file (SQLite, with its WAL)."""
    from cloud.store import CloudStore

    st = CloudStore(tmp_path / "c.db")
    token = st.add_user("ana", "reviewer")
    sid, csrf = st.create_session(st.authenticate_user(token).id, 60)
    raw = (tmp_path / "c.db").read_bytes() + (tmp_path / "c.db-wal").read_bytes()
    assert token.encode() not in raw and sid.encode() not in raw
    assert st.session(sid).csrf_token == csrf
    st.close()
