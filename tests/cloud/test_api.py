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
    r = client.post("/v1/identify?threshold=2", content=real_clip(5.0))
    assert r.status_code == 400 and "threshold" in r.json()["error"]
    r = client.post("/v1/identify?top_k=abc", content=real_clip(5.0))
    assert r.status_code == 400


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
    assert client.get("/v1/reports/tours", headers=dev).status_code == 401  # admin only
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
