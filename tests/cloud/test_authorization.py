"""The authorization matrix: every endpoint of the device API, the admin reports and the public
endpoints × every kind of caller → the expected status (and, where the status alone cannot tell,
what the answer holds). Device B acts on device A's tour, detection, clip, confirmations and
feedback and is refused every time; A's data is unchanged afterwards. Revocation with ``silencio
cloud revoke-device`` takes effect on the next request. Repeated wrong tokens from one client
address are answered 429 with ``Retry-After``."""

from __future__ import annotations

import hashlib
import tarfile
import uuid

import pytest

from cloud.errors import TooManyRequests
from cloud.ratelimit import BadTokenLimiter, client_address, parse_proxies
from silencio.cli import main
from tests.conftest import MINI, cloud_asgi

from .conftest import auth, clip_meta, detection, now, real_clip, tour

CALLERS = ("none", "wrong", "A", "B", "revoked", "admin", "reviewer")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A service with devices A and B, a revoked device, an admin and a console reviewer; A has a
    tour, a detection, a confirmed clip and feedback; a release is published."""
    from starlette.testclient import TestClient

    from cloud.settings import CloudSettings
    from cloud.store import open_store

    home = tmp_path_factory.mktemp("authz")
    mp = pytest.MonkeyPatch()
    mp.setenv("SILENCIO_HOME", str(home))
    mp.setenv("SILENCIO_CLOUD_TAXONOMY", str(MINI / "taxonomy.csv"))
    mp.setenv("SILENCIO_CLOUD_AUTH_FAIL_LIMIT", "0")  # the matrix sends many wrong tokens on purpose
    store = open_store(CloudSettings())
    tokens = {
        "A": store.add_device("device-a"),
        "B": store.add_device("device-b"),
        "revoked": store.add_device("device-r"),
        "admin": store.add_device("office", "admin"),
        "reviewer": store.add_user("rita", "reviewer"),
        "wrong": "x" * 43,
    }
    rel = home / "release.tar"
    with tarfile.open(rel, "w") as tar:
        tar.add(MINI / "taxonomy.csv", arcname="package/taxonomy.csv")
    store.publish_release("1", hashlib.sha256(rel.read_bytes()).hexdigest(), "fv1-x", str(rel), {"name": "s"})
    store.close()
    assert main(["cloud", "revoke-device", "device-r"]) == 0  # the operator's command
    with TestClient(cloud_asgi(), raise_server_exceptions=False) as client:
        a = auth(tokens["A"])
        t = tour(ended_at=None)
        d = detection(t["uuid"], "grekis")
        assert client.post("/v1/sync", json={"tours": [t], "detections": [d]}, headers=a).json()["accepted"]
        audio = real_clip(5.0)
        meta = clip_meta(audio, detection_uuid=d["uuid"], tour_uuid=t["uuid"])
        ack = client.post(
            "/v1/clips", data={"meta": meta}, files={"audio": ("c.ogg", audio)}, headers=a
        ).json()
        fb = {
            "uuid": str(uuid.uuid4()),
            "detection_uuid": d["uuid"],
            "kind": "confirmed",
            "created_at": now(),
        }
        assert client.post("/v1/feedback", json=fb, headers=a).status_code == 200
        yield {
            "home": home,
            "client": client,
            "tokens": tokens,
            "tour": t,
            "detection": d,
            "clip": (ack["uuid"], meta, audio),
            "feedback": fb,
        }
    mp.undo()


def headers(env, who: str) -> dict[str, str]:
    return {} if who == "none" else auth(env["tokens"][who])


# ---------------------------------------------------------------------------------- requests on A's data
def sync_into_a_tour(env, h):
    """A's tour re-sent (with an end time) and a new detection in it."""
    t = {**env["tour"], "ended_at": now()}
    return env["client"].post(
        "/v1/sync", json={"tours": [t], "detections": [detection(t["uuid"])]}, headers=h
    )


def resend_a_detection(env, h):
    return env["client"].post("/v1/sync", json={"detections": [env["detection"]]}, headers=h)


def new_clip_of_a_detection(env, h):
    audio = real_clip(5.0)
    meta = clip_meta(audio, detection_uuid=env["detection"]["uuid"], tour_uuid=env["tour"]["uuid"])
    return env["client"].post("/v1/clips", data={"meta": meta}, files={"audio": ("c.ogg", audio)}, headers=h)


def resend_a_clip(env, h):
    _, meta, audio = env["clip"]
    return env["client"].post("/v1/clips", data={"meta": meta}, files={"audio": ("c.ogg", audio)}, headers=h)


def confirmations(env, h):
    return env["client"].get("/v1/confirmations?since=0", headers=h)


def feedback_on_a_detection(env, h):
    fb = {"uuid": str(uuid.uuid4()), "detection_uuid": env["detection"]["uuid"], "kind": "not_an_animal"}
    return env["client"].post("/v1/feedback", json={**fb, "created_at": now()}, headers=h)


def resend_a_feedback(env, h):
    return env["client"].post("/v1/feedback", json=env["feedback"], headers=h)


def get(path):
    return lambda env, h: env["client"].get(path, headers=h)


def identify_v1(env, h):
    return env["client"].post("/v1/identify", content=real_clip(5.0), headers=h)


def identify_native(env, h):
    return env["client"].post("/identify", files={"audio": ("a.ogg", real_clip(5.0))}, headers=h)


# ---------------------------------------------------------------------------------- expectations
def accepted(r) -> bool:
    return r.json()["rejected"] == [] and len(r.json()["accepted"]) + len(r.json()["duplicates"]) >= 1


def all_rejected_as_not_theirs(r) -> bool:
    body = r.json()
    return (
        not body["accepted"]
        and not body["duplicates"]
        and all("belongs to another device" in x["error"] for x in body["rejected"])
    )


def has_a_clip(env, r) -> bool:
    return env["clip"][0] in {c["clip_uuid"] for c in r.json()["confirmations"]}


UNAUTH = {"none": 401, "wrong": 401, "revoked": 401, "reviewer": 401}
DEVICE_DATA = {**UNAUTH, "A": 200, "B": 403, "admin": 403}  # admins act as their own device
REPORTS = {**UNAUTH, "A": 403, "B": 403, "admin": 200}
ANY_DEVICE = {**UNAUTH, "A": 200, "B": 200, "admin": 200}
PUBLIC = dict.fromkeys(CALLERS, 200)

#: (row, request, expected status per caller, extra check per caller on a 200)
MATRIX = [
    (
        "POST /v1/sync: A's tour and a detection in it",
        sync_into_a_tour,
        ANY_DEVICE,
        {
            "A": lambda e, r: accepted(r),
            "B": lambda e, r: all_rejected_as_not_theirs(r),
            "admin": lambda e, r: all_rejected_as_not_theirs(r),
        },
    ),
    (
        "POST /v1/sync: A's detection UUID re-sent",
        resend_a_detection,
        ANY_DEVICE,
        {
            "A": lambda e, r: r.json()["duplicates"] == [e["detection"]["uuid"]],
            "B": lambda e, r: all_rejected_as_not_theirs(r),
            "admin": lambda e, r: all_rejected_as_not_theirs(r),
        },
    ),
    ("POST /v1/clips: a clip of A's detection", new_clip_of_a_detection, DEVICE_DATA, {}),
    (
        "POST /v1/clips: A's clip UUID re-sent",
        resend_a_clip,
        DEVICE_DATA,
        {"A": lambda e, r: r.json()["duplicate"] is True},
    ),
    (
        "GET /v1/confirmations: A's confirmations only for A",
        confirmations,
        ANY_DEVICE,
        {"A": has_a_clip, "B": lambda e, r: not has_a_clip(e, r), "admin": lambda e, r: not has_a_clip(e, r)},
    ),
    ("POST /v1/feedback: on A's detection", feedback_on_a_detection, DEVICE_DATA, {}),
    (
        "POST /v1/feedback: A's feedback UUID re-sent",
        resend_a_feedback,
        DEVICE_DATA,
        {"A": lambda e, r: r.json()["duplicate"] is True},
    ),
    ("GET /v1/reports/tours", get("/v1/reports/tours"), REPORTS, {}),
    ("GET /v1/reports/summary", get("/v1/reports/summary"), REPORTS, {}),
    ("GET /v1/releases/current", get("/v1/releases/current"), ANY_DEVICE, {}),
    ("GET /v1/releases/current/download", get("/v1/releases/current/download"), ANY_DEVICE, {}),
    ("POST /v1/identify (public)", identify_v1, PUBLIC, {}),
    ("POST /identify (public)", identify_native, PUBLIC, {}),
    ("GET /v1/schema (public)", get("/v1/schema"), PUBLIC, {}),
    ("GET /v1/ready (public)", get("/v1/ready"), PUBLIC, {}),
]


def test_every_route_is_in_the_matrix():
    """Every route of the API (the device API under /v1 and /identify; the probes, metrics and
    docs are public and read nothing of anyone's)."""
    from tests.cloud.test_api import _routes

    rows = {row.split(":")[0].split(" (")[0] for row, *_ in MATRIX}
    served = {
        f"{m.upper()} {p}" for m, p in _routes(cloud_asgi()) if p.startswith("/v1/") or p == "/identify"
    }
    assert served <= rows, served - rows


@pytest.mark.parametrize("row, request_, expected, checks", MATRIX, ids=[m[0] for m in MATRIX])
def test_authorization_matrix(env, row, request_, expected, checks):
    got = {}
    for who in CALLERS:
        r = request_(env, headers(env, who))
        got[who] = r.status_code
        if r.status_code >= 400:
            body = r.json()
            assert body == {"error": body["error"], "status": r.status_code}, (who, r.text)
        if r.status_code == 200 and who in checks:
            assert checks[who](env, r), (row, who, r.text[:300])
    assert got == expected, row


def test_a_data_is_unchanged_by_everyone_else(env):
    """After the matrix: A's tour, detections, clip, confirmation and feedback are A's alone."""
    from cloud.settings import CloudSettings
    from cloud.store import open_store

    store = open_store(CloudSettings(home=env["home"]))
    try:
        a = store.authenticate(env["tokens"]["A"])
        b = store.authenticate(env["tokens"]["B"])
        report = store.tour_report(env["tour"]["uuid"])[0]
        assert report.device == "device-a"
        det = store.detection(a.id, env["detection"]["uuid"])
        assert det is not None and det.species_code == "grekis"
        assert store.detection(b.id, env["detection"]["uuid"]) is None  # not readable as B's
        clip = store.clip(env["clip"][0])
        assert clip.device_id == a.id
        assert [c.clip_uuid for c in store.confirmations_since(b.id, 0)] == []
        feedback = [f for f in store.relabel_queue(True) if f.detection_uuid == env["detection"]["uuid"]]
        assert feedback and {f.device_id for f in feedback} == {a.id}
    finally:
        store.close()


def test_revoke_device_takes_effect_on_the_next_request(env):
    from cloud.settings import CloudSettings
    from cloud.store import open_store

    settings = CloudSettings(home=env["home"])
    store = open_store(settings)
    token = store.add_device("device-c")
    store.close()
    client = env["client"]
    assert client.get("/v1/confirmations", headers=auth(token)).status_code == 200
    assert main(["cloud", "revoke-device", "device-c", "--db", str(settings.db_path)]) == 0
    r = client.get("/v1/confirmations", headers=auth(token))
    assert r.status_code == 401 and "revoked" in r.json()["error"]


# ---------------------------------------------------------------------------------- wrong-token limit
class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_limiter_blocks_an_address_for_the_rest_of_the_window():
    clock = Clock()
    lim = BadTokenLimiter(3, 60.0, clock=clock)
    for _ in range(3):
        lim.check("1.2.3.4")
        lim.failed("1.2.3.4")
        clock.t += 1
    with pytest.raises(TooManyRequests) as exc:
        lim.check("1.2.3.4")
    assert exc.value.status == 429 and exc.value.retry_after == 57  # the first failure leaves at 1060
    lim.check("5.6.7.8")  # another address is not affected
    clock.t = 1060.5
    lim.check("1.2.3.4")  # the oldest failure left the window: 2 remain, below the limit
    lim.failed("1.2.3.4")
    with pytest.raises(TooManyRequests):
        lim.check("1.2.3.4")
    off = BadTokenLimiter(0, 60.0, clock=clock)
    for _ in range(100):
        off.failed("x")
    off.check("x")  # 0: no limit


def test_limiter_memory_is_bounded():
    lim = BadTokenLimiter(2, 60.0, max_clients=100, clock=Clock())
    for i in range(1000):
        lim.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(lim._failures) == 100


def test_client_address_trusts_x_forwarded_for_only_from_trusted_proxies():
    proxies = parse_proxies("172.16.0.0/12, 127.0.0.1, nginx")
    assert client_address("203.0.113.5", "198.51.100.1", proxies) == "203.0.113.5"  # not a proxy: ignored
    assert client_address("172.18.0.3", "198.51.100.1", proxies) == "198.51.100.1"
    # a client cannot hide behind a forged header: the right-most untrusted hop counts
    assert client_address("172.18.0.3", "1.1.1.1, 198.51.100.1, 127.0.0.1", proxies) == "198.51.100.1"
    assert client_address("nginx", "198.51.100.7", proxies) == "198.51.100.7"
    assert client_address(None, None, proxies) == "unknown"


@pytest.fixture
def limited(tmp_path, monkeypatch):
    from starlette.testclient import TestClient

    from cloud.settings import CloudSettings
    from cloud.store import open_store

    monkeypatch.setenv("SILENCIO_CLOUD_TAXONOMY", str(MINI / "taxonomy.csv"))
    monkeypatch.setenv("SILENCIO_CLOUD_AUTH_FAIL_LIMIT", "3")
    monkeypatch.setenv("SILENCIO_CLOUD_AUTH_FAIL_WINDOW_S", "120")
    monkeypatch.setenv("SILENCIO_CLOUD_TRUSTED_PROXIES", "testclient")  # TestClient's peer name
    store = open_store(CloudSettings())
    token = store.add_device("good")
    store.close()
    with TestClient(cloud_asgi(), raise_server_exceptions=False) as client:
        yield client, token


def test_repeated_wrong_tokens_from_one_address_get_429_with_retry_after(limited):
    client, token = limited
    one = {"x-forwarded-for": "198.51.100.1"}
    for i in range(3):
        assert client.get("/v1/confirmations", headers={**one, **auth(f"guess-{i}")}).status_code == 401
    r = client.get("/v1/confirmations", headers={**one, **auth("guess-3")})
    assert r.status_code == 429 and r.json()["status"] == 429
    assert 1 <= int(r.headers["retry-after"]) <= 120
    # blocked whatever the token: a right guess is not told apart from a wrong one
    assert client.get("/v1/confirmations", headers={**one, **auth(token)}).status_code == 429
    assert client.post("/v1/sync", json={}, headers={**one, **auth(token)}).status_code == 429
    # requests without a token, and other addresses, are not blocked
    assert client.get("/v1/schema", headers=one).status_code == 200
    assert (
        client.get(
            "/v1/confirmations", headers={"x-forwarded-for": "198.51.100.2", **auth(token)}
        ).status_code
        == 200
    )
    # a missing token is not a guess: it does not count
    two = {"x-forwarded-for": "198.51.100.3"}
    for _ in range(5):
        assert client.get("/v1/confirmations", headers=two).status_code == 401
    assert client.get("/v1/confirmations", headers={**two, **auth(token)}).status_code == 200
