"""Every endpoint of the BentoML service in-process (``to_asgi()``), with real audio and the real
BirdNET-only fallback model. Bad input must get its exact status, never a 500."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from tests.conftest import tiny_edge_package

from .conftest import SOUNDSCAPE, auth, clip_meta, detection, now, real_clip, tour


def test_identify_multipart_and_raw_name_species_fully(client):
    audio = SOUNDSCAPE.read_bytes()
    r = client.post("/identify", files={"audio": ("s.ogg", audio, "audio/ogg")}, data={"threshold": "0.0"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"]["birdnet_only"] is True and "no trained ensemble" in out["model"]["note"]
    assert (
        len(out["windows"]) == 12 and out["windows"][0]["start"] == 0.0 and out["windows"][-1]["end"] == 60.0
    )
    sp = out["windows"][0]["species"][0]
    assert set(sp) == {"code", "scientific_name", "common_name", "taxon_class", "probability"}
    assert sp["taxon_class"] == "Aves"  # BirdNET knows birds only
    r2 = client.post("/v1/identify?threshold=0&top_k=3&stride=2.5", content=audio)
    assert r2.status_code == 200 and len(r2.json()["windows"]) == 23
    assert all(len(w["species"]) <= 3 for w in r2.json()["windows"])
    r3 = client.post("/v1/identify?threshold=0&members=true", content=real_clip(5.0))
    assert r3.status_code == 200 and "birdnet" in r3.json()["windows"][0]["members"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"this is not audio at all, just text", 415, "not a supported audio"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 100, 415, "not a supported audio"),
        (b"OggS" + b"\x00\x02" + b"garbage" * 20, 400, "clip"),
    ],
)
def test_identify_bad_audio_is_a_clear_4xx(client, body, status, words):
    r = client.post("/v1/identify", content=body)
    assert r.status_code == status, r.text
    assert r.json()["status"] == status and r.json()["error"]


def test_identify_corrupt_truncated_and_too_large(client):
    audio = SOUNDSCAPE.read_bytes()
    r = client.post("/v1/identify", content=audio[: len(audio) // 3])  # truncated OGG still decodes a part
    assert r.status_code in (200, 400)
    big = b"RIFF" + b"\0" * int(3.2e6)
    r = client.post("/v1/identify", content=big)
    assert r.status_code == 413 and "exceeds" in r.json()["error"]
    r = client.post("/identify", files={"audio": ("x.txt", b"hello", "text/plain")})
    assert r.status_code == 415 and "not a supported audio" in r.text
    r = client.post("/v1/identify?threshold=2", content=real_clip(5.0))  # outside the schema: 422
    assert r.status_code == 422 and "threshold" in r.json()["error"]
    r = client.post("/v1/identify?top_k=abc", content=real_clip(5.0))
    assert r.status_code == 422 and "top_k" in r.json()["error"]


def test_sync_is_authenticated_idempotent_and_validated(client, cloud_env):
    t = tour()
    dets = [detection(t["uuid"]), detection(t["uuid"], code="grekis")]
    batch = {"wire_version": 2, "tours": [t], "detections": dets}
    assert client.post("/v1/sync", json=batch).status_code == 401
    assert client.post("/v1/sync", json=batch, headers=auth("wrong")).status_code == 401
    r = client.post("/v1/sync", json=batch, headers=auth(cloud_env["device"]))
    assert r.status_code == 200
    assert set(r.json()["accepted"]) == {t["uuid"], *(d["uuid"] for d in dets)}
    again = client.post("/v1/sync", json=batch, headers=auth(cloud_env["device"])).json()
    assert again["accepted"] == [] and len(again["duplicates"]) == 3
    # another device may not write into this tour
    other = client.post(
        "/v1/sync", json={"detections": [detection(t["uuid"])]}, headers=auth(cloud_env["other"])
    ).json()
    assert other["rejected"][0]["error"] == "tour belongs to another device"
    # unknown species and unknown tours are rejected per item, not the whole batch
    mixed = {
        "detections": [
            detection(t["uuid"], code="class_97"),
            detection("00000000-0000-0000-0000-000000000000"),
        ]
    }
    r = client.post("/v1/sync", json=mixed, headers=auth(cloud_env["device"])).json()
    assert [x["error"][:14] for x in r["rejected"]] == ["unknown specie", "unknown tour 0"]


@pytest.mark.parametrize(
    ("body", "ctype", "status"),
    [
        (b"{not json", "application/json", 422),
        (b'{"detections": [{"uuid": "x"}]}', "application/json", 422),
        (b'{"wire_version": 3}', "application/json", 422),
        (b'{"tours": [], "extra": 1}', "application/json", 422),
        (b"tours=1", "application/x-www-form-urlencoded", 415),
    ],
)
def test_sync_malformed(client, cloud_env, body, ctype, status):
    r = client.post("/v1/sync", content=body, headers={**auth(cloud_env["device"]), "content-type": ctype})
    assert r.status_code == status, r.text


def test_clip_is_checked_stored_confirmed_and_fetched_incrementally(client, cloud_env):
    dev = auth(cloud_env["device"])
    t = tour()
    d = detection(t["uuid"])
    client.post("/v1/sync", json={"tours": [t], "detections": [d]}, headers=dev)
    audio = real_clip(10.0)
    since = client.get("/v1/confirmations?since=0", headers=dev).json()["next"]
    meta = clip_meta(audio, tour_uuid=t["uuid"], detection_uuid=d["uuid"])
    r = client.post(
        "/v1/clips", data={"meta": meta}, files={"audio": ("c.ogg", audio, "audio/ogg")}, headers=dev
    )
    assert r.status_code == 200, r.text
    conf = r.json()["confirmation"]
    assert conf["edge_species"] == "rutjac1" and isinstance(conf["agree"], bool)
    assert conf["species"] and {"code", "scientific_name", "common_name", "taxon_class"} <= set(
        conf["species"][0]
    )
    sha = hashlib.sha256(audio).hexdigest()
    stored = list((cloud_env["home"] / "cloud" / "clips").rglob(f"{sha}.ogg"))
    assert len(stored) == 1 and stored[0].read_bytes() == audio
    # re-sending is harmless: same confirmation, nothing stored twice
    again = client.post(
        "/v1/clips", data={"meta": meta}, files={"audio": ("c.ogg", audio, "audio/ogg")}, headers=dev
    )
    assert again.json()["duplicate"] is True and again.json()["confirmation"]["seq"] == conf["seq"]
    page = client.get(f"/v1/confirmations?since={since}", headers=dev).json()
    assert [c["seq"] for c in page["confirmations"]] == [conf["seq"]] and page["next"] == conf["seq"]
    assert client.get(f"/v1/confirmations?since={page['next']}", headers=dev).json()["confirmations"] == []
    # the other device sees none of it
    assert (
        client.get("/v1/confirmations?since=0", headers=auth(cloud_env["other"])).json()["confirmations"]
        == []
    )


def test_bad_clips(client, cloud_env):
    dev = auth(cloud_env["device"])
    audio = real_clip(5.0)
    files = {"audio": ("c.ogg", audio, "audio/ogg")}
    bad_sha = json.loads(clip_meta(audio))
    bad_sha["sha256"] = "0" * 64
    r = client.post("/v1/clips", data={"meta": json.dumps(bad_sha)}, files=files, headers=dev)
    assert r.status_code == 400 and "sha256" in r.json()["error"]
    partial = clip_meta(audio)
    r = client.post(
        "/v1/clips",
        data={"meta": partial},
        files={"audio": ("c.ogg", audio[:-100], "audio/ogg")},
        headers=dev,
    )
    assert r.status_code == 400 and "partial" in r.json()["error"]
    text = b"not audio" * 10
    r = client.post(
        "/v1/clips",
        data={"meta": clip_meta(text)},
        files={"audio": ("c.ogg", text, "audio/ogg")},
        headers=dev,
    )
    assert r.status_code == 415
    assert client.post("/v1/clips", data={"meta": "{}"}, files=files, headers=dev).status_code == 422
    assert client.post("/v1/clips", data={"meta": clip_meta(audio)}, files=files).status_code == 401
    assert client.post("/v1/clips", content=audio, headers=dev).status_code == 415
    big = b"RIFF" + b"\0" * int(2.1e6)
    r = client.post(
        "/v1/clips", data={"meta": clip_meta(big)}, files={"audio": ("c.wav", big, "audio/wav")}, headers=dev
    )
    assert r.status_code == 413


def test_feedback_reports_and_relabel_export(client, cloud_env, tmp_path):
    from cloud.service import Cloud
    from cloud.settings import CloudSettings

    dev = auth(cloud_env["device"])
    t = tour(guide="Beto")
    d1, d2 = detection(t["uuid"], code="rutjac1"), detection(t["uuid"], code="grekis")
    client.post("/v1/sync", json={"tours": [t], "detections": [d1, d2]}, headers=dev)
    audio = real_clip(5.0)
    client.post(
        "/v1/clips",
        data={"meta": clip_meta(audio, detection_uuid=d1["uuid"], reason="flagged")},
        files={"audio": ("c.ogg", audio, "audio/ogg")},
        headers=dev,
    )
    fb = {
        "uuid": "3f6c1a52-2b1c-4a6e-9a61-0b9a4f1d2e11",
        "detection_uuid": d1["uuid"],
        "kind": "wrong_species",
        "correct_code": "grekis",
        "created_at": now(),
    }
    assert client.post("/v1/feedback", json=fb, headers=dev).json()["duplicate"] is False
    assert client.post("/v1/feedback", json=fb, headers=dev).json()["duplicate"] is True
    assert (
        client.post(
            "/v1/feedback",
            json={**fb, "uuid": "3f6c1a52-2b1c-4a6e-9a61-0b9a4f1d2e12", "correct_code": None},
            headers=dev,
        ).status_code
        == 422
    )
    ok = {
        **fb,
        "uuid": "3f6c1a52-2b1c-4a6e-9a61-0b9a4f1d2e13",
        "detection_uuid": d2["uuid"],
        "kind": "confirmed",
        "correct_code": None,
    }
    assert client.post("/v1/feedback", json=ok, headers=dev).status_code == 200
    missing = {
        **ok,
        "uuid": "3f6c1a52-2b1c-4a6e-9a61-0b9a4f1d2e14",
        "detection_uuid": "3f6c1a52-0000-4a6e-9a61-0b9a4f1d2e14",
    }
    assert client.post("/v1/feedback", json=missing, headers=dev).status_code == 404
    assert client.get("/v1/reports/tours", headers=dev).status_code == 403  # admin only
    rep = client.get(f"/v1/reports/tours?tour={t['uuid']}", headers=auth(cloud_env["admin"])).json()["tours"][
        0
    ]
    assert rep["guide"] == "Beto" and rep["species_heard"] == 2
    by = {s["code"]: s for s in rep["species"]}
    assert by["grekis"]["confirmed"] is True and by["rutjac1"]["flagged"] is True
    assert by["grekis"]["common_name"] and by["grekis"]["taxon_class"]
    summ = client.get("/v1/reports/summary", headers=auth(cloud_env["admin"])).json()
    assert summ["per_guide"]["Beto"]["species_confirmed"] >= 1 and summ["tours"] >= 1
    res = Cloud(CloudSettings(home=cloud_env["home"])).export_feedback(tmp_path / "relabel")
    rows = (tmp_path / "relabel" / "labels.csv").read_text().splitlines()
    assert res["rows"] == 2 and any(",grekis,wrong_species,rutjac1," in r for r in rows)
    assert list((tmp_path / "relabel" / "clips").iterdir())
    assert (
        Cloud(CloudSettings(home=cloud_env["home"])).export_feedback(tmp_path / "again")["rows"] == 0
    )  # marked exported


def test_release_publish_and_download(client, cloud_env, mini, tmp_path):
    import numpy as np

    from cloud.service import Cloud
    from cloud.settings import CloudSettings
    from shared_features import LabelSpace

    dev = auth(cloud_env["device"])
    assert client.get("/v1/releases/current", headers=dev).status_code == 404
    labels = LabelSpace.from_taxonomy_csv(mini / "taxonomy.csv")
    package = tiny_edge_package(tmp_path / "edge", labels, version="42", val_roc_auc=0.7)
    with pytest.raises(Exception, match="not a silencio model package"):
        Cloud(CloudSettings(home=cloud_env["home"])).publish_release(tmp_path)  # not a package at all
    Cloud(CloudSettings(home=cloud_env["home"])).publish_release(package)
    info = client.get("/v1/releases/current", headers=dev).json()
    assert info["version"] == "42" and info["feature_fingerprint"].startswith("fv1-")
    assert info["signature"] and info["key_id"] and info["labels_sha256"] and info["key_rotations"] == []
    assert client.get("/v1/releases/current/download").status_code == 401
    blob = client.get("/v1/releases/current/download", headers=dev).content
    assert hashlib.sha256(blob).hexdigest() == info["sha256"] and len(blob) == info["bytes"]
    names = tarfile.open(fileobj=io.BytesIO(blob)).getnames()
    assert "package/package.json" in names
    assert np.isfinite(info["metrics"]["best_val_roc_auc"])


def test_schema_and_ready(client):
    r = client.get("/v1/schema").json()
    assert r["wire_version"] == 2 and "SyncBatch" in r["schemas"]
    ready = client.get("/v1/ready").json()
    assert ready["ready"] is True and ready["model"]["birdnet_only"] is True
    assert "/identify" in client.get("/docs.json").json()["paths"]


# ---------------------------------------------------------------------------------- one error shape
def _shape(r, status: int) -> str:
    body = r.json()
    assert r.status_code == status and body == {"error": body["error"], "status": status}, (
        r.status_code,
        r.text,
    )
    assert body["error"] and "/tmp" not in body["error"] and "object at 0x" not in body["error"]
    return body["error"]


def test_one_error_shape_everywhere_and_422_for_schema_errors(client, cloud_env):
    audio = real_clip(5.0)
    dev = auth(cloud_env["device"])
    # BentoML's native /identify: its own validation and its errors, in the same shape
    assert "threshold" in _shape(
        client.post("/identify", files={"audio": ("a.ogg", audio)}, data={"threshold": "x"}), 422
    )
    assert "audio" in _shape(client.post("/identify", files={"other": ("a.ogg", audio)}), 422)
    assert "audio" in _shape(client.post("/identify", data={"audio": "http://127.0.0.1:1/x.wav"}), 415)
    multipart_url = {"audio": (None, "http://127.0.0.1:1/x.wav")}  # a string part, not a file
    assert "file" in _shape(client.post("/identify", files=multipart_url), 422)
    _shape(client.post("/identify", json={"audio": "/etc/passwd"}), 415)
    msg = _shape(client.post("/identify", files={"audio": ("x.wav", b"RIFF" + b"\0" * 64)}), 400)
    assert "x.wav" not in msg and "tmp" not in msg  # no server-side temporary file name
    _shape(client.post("/identify", files={"audio": ("a.ogg", audio)}, data={"top_k": "99"}), 422)
    # the device API
    _shape(client.get("/v1/confirmations?since=abc", headers=dev), 422)
    _shape(client.get("/v1/confirmations?limit=0", headers=dev), 422)
    _shape(client.post("/v1/identify?members=maybe", content=audio), 422)
    _shape(client.post("/v1/identify?stride=nan", content=audio), 422)
    _shape(
        client.post(
            "/v1/clips",
            content=b"--x\r\nbroken",
            headers={**dev, "content-type": "multipart/form-data; boundary=x"},
        ),
        422,
    )
    # routing errors, BentoML's and Starlette's
    _shape(client.get("/v1/nowhere"), 404)
    _shape(client.get("/nowhere"), 404)
    _shape(client.delete("/v1/sync"), 405)
    _shape(client.post("/docs"), 405)


def test_client_errors_log_one_line_and_server_errors_a_traceback(client, cloud_env, caplog, monkeypatch):
    import logging

    import bentoml

    caplog.set_level(logging.INFO)
    client.post("/v1/sync", content=b"{}")  # 401
    client.post("/identify", files={"audio": ("a.ogg", real_clip(5.0))}, data={"threshold": "x"})  # 422
    client.get("/v1/reports/tours?tour=a%0Ab", headers=auth(cloud_env["admin"]))  # 404, a line break in it
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(problems) == 3, [r.getMessage() for r in problems]
    for r in problems:
        assert r.levelno == logging.WARNING and r.exc_info is None and "\n" not in r.getMessage()
    assert "→ 401" in problems[0].getMessage() and "→ 422" in problems[1].getMessage()
    caplog.clear()

    def broken(*a, **kw):
        raise RuntimeError("a bug in the summary at /srv/secret/path")

    monkeypatch.setattr(bentoml.get_current_service().cloud, "summary", broken)
    r = client.get("/v1/reports/summary", headers=auth(cloud_env["admin"]))
    assert "secret" not in _shape(r, 500)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None  # a server error keeps its traceback


def test_readiness_is_503_on_both_probes_until_the_model_is_loaded(client):
    import bentoml

    svc = bentoml.get_current_service()
    assert client.get("/readyz").status_code == 200 and client.get("/v1/ready").status_code == 200
    scorer = svc.scorer
    scorer.ready, svc._scorer_ready = False, False  # as while the scorer is loading its model
    try:
        assert "not ready" in _shape(client.get("/readyz"), 503)
        assert "loading" in _shape(client.get("/v1/ready"), 503)
    finally:
        scorer.ready = True
    assert client.get("/readyz").status_code == 200
    assert client.get("/v1/ready").json()["ready"] is True


# ---------------------------------------------------------------------------------- the API document
def _routes(app, prefix: str = "") -> set[tuple[str, str]]:
    from starlette.routing import Mount, Route

    out = set()
    for r in getattr(app, "routes", []):
        if isinstance(r, Route):
            for m in r.methods or ():
                if m != "HEAD":
                    out.add((m.lower(), prefix + r.path))
        # static files of the docs page; the ecologists' console (HTML pages behind a login, tests/console)
        elif isinstance(r, Mount) and r.path not in ("/static_content", "/console"):
            out |= _routes(r.app, prefix + r.path)
    return out


def test_openapi_document_is_the_whole_api(client):
    from importlib import metadata

    from openapi_spec_validator import validate

    from tests.conftest import cloud_asgi

    doc = client.get("/docs.json").json()
    validate(doc)  # a valid OpenAPI 3.1 document
    assert doc["info"]["title"].startswith("El Silencio") and doc["info"]["version"] == metadata.version(
        "silencio"
    )
    assert doc["components"]["securitySchemes"]["bearer"] == {
        **doc["components"]["securitySchemes"]["bearer"],
        "type": "http",
        "scheme": "bearer",
    }
    documented = {(m, p) for p, item in doc["paths"].items() for m in item}
    served = _routes(cloud_asgi()) | {("get", "/docs"), ("get", "/docs.json")}
    assert served - documented == set(), served - documented
    assert documented - served == set(), documented - served
    schemas = doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            ok = op["responses"]["200"]["content"]
            assert ok, (method, path)
            if method == "post":
                assert op["requestBody"]["content"], path
            for code, resp in op["responses"].items():
                if code != "200":
                    assert resp["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorBody"
                    }
            if path.startswith("/v1/") and path not in ("/v1/identify", "/v1/schema", "/v1/ready"):
                assert op["security"] == [{"bearer": []}] and "401" in op["responses"], path
    refs = set()

    def walk(x):
        if isinstance(x, dict):
            if "$ref" in x:
                refs.add(x["$ref"].rsplit("/", 1)[-1])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(doc)
    assert refs <= set(schemas), refs - set(schemas)
    page = client.get("/docs")
    assert page.status_code == 200 and "/docs.json" in page.text and "swagger-ui-bundle.js" in page.text
    assert client.get("/static_content/swagger-ui-bundle.js").status_code == 200


def _conforms(doc: dict, model: str, body) -> None:
    import jsonschema

    schema = {"$ref": f"#/components/schemas/{model}", "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


def test_real_answers_follow_the_document(client, cloud_env):
    doc = client.get("/docs.json").json()
    dev, admin = auth(cloud_env["device"]), auth(cloud_env["admin"])
    audio = real_clip(5.0)
    _conforms(
        doc, "IdentifyResult", client.post("/v1/identify?threshold=0&members=true", content=audio).json()
    )
    _conforms(doc, "IdentifyResult", client.post("/identify", files={"audio": ("a.ogg", audio)}).json())
    t = tour()
    d = detection(t["uuid"])
    _conforms(
        doc, "SyncAck", client.post("/v1/sync", json={"tours": [t], "detections": [d]}, headers=dev).json()
    )
    ack = client.post(
        "/v1/clips",
        data={"meta": clip_meta(audio, detection_uuid=d["uuid"])},
        files={"audio": ("c.ogg", audio, "audio/ogg")},
        headers=dev,
    ).json()
    _conforms(doc, "ClipAck", ack)
    _conforms(doc, "ConfirmationsPage", client.get("/v1/confirmations?since=0", headers=dev).json())
    _conforms(doc, "TourReport", client.get("/v1/reports/tours", headers=admin).json())
    _conforms(doc, "SummaryReport", client.get("/v1/reports/summary", headers=admin).json())
    _conforms(doc, "WireSchemas", client.get("/v1/schema").json())
    _conforms(doc, "ReadyStatus", client.get("/v1/ready").json())
    rel = client.get("/v1/releases/current", headers=dev)
    _conforms(doc, "ReleaseInfo" if rel.status_code == 200 else "ErrorBody", rel.json())
    _conforms(doc, "ErrorBody", client.get("/v1/releases/current").json())
