"""The service over the store, through the real BentoML app in-process: wire-v2 fields the cloud now
keeps (device status and last sync, a clip's source and the edge's top scores), ownership answered
403, a revoked token refused from the next request, and a clip whose confirmation was lost (the
process died between storing and confirming) confirmed on its re-upload."""

from __future__ import annotations

import pytest

from .conftest import auth, clip_meta, detection, real_clip, tour


@pytest.fixture(scope="module")
def store(cloud_env):
    from cloud.settings import CloudSettings
    from cloud.store import open_store

    st = open_store(CloudSettings())
    yield st
    st.close()


def test_device_status_and_clip_source_are_stored(client, cloud_env, store):
    dev = auth(cloud_env["device"])
    t = tour()
    d = detection(t["uuid"])
    status = {
        "model_version": "student 7",
        "app_version": "0.3",
        "pending_detections": 2,
        "audio_paused": True,
    }
    r = client.post("/v1/sync", json={"tours": [t], "detections": [d], "device": status}, headers=dev)
    assert r.status_code == 200, r.text
    me = next(x for x in store.devices() if x.name == "guide-device-1")
    assert me.status.model_version == "student 7" and me.status.audio_paused and me.last_sync_at is not None
    audio = real_clip(5.0)
    top = [{"code": "rutjac1", "probability": 0.77}]
    meta = clip_meta(audio, detection_uuid=d["uuid"], source="microphone", source_offset=812.5, edge_top=top)
    r = client.post(
        "/v1/clips", data={"meta": meta}, files={"audio": ("c.ogg", audio, "audio/ogg")}, headers=dev
    )
    assert r.status_code == 200, r.text
    clip = store.clip(r.json()["uuid"])
    assert (clip.source, clip.source_offset) == ("microphone", 812.5)
    assert [(e.code, e.probability) for e in clip.edge_top] == [("rutjac1", 0.77)]


def test_another_devices_data_is_forbidden(client, cloud_env):
    dev, other = auth(cloud_env["device"]), auth(cloud_env["other"])
    t = tour()
    d = detection(t["uuid"])
    client.post("/v1/sync", json={"tours": [t], "detections": [d]}, headers=dev)
    audio = real_clip(5.0)
    files = {"audio": ("c.ogg", audio, "audio/ogg")}
    meta = clip_meta(audio, detection_uuid=d["uuid"])
    r = client.post("/v1/clips", data={"meta": meta}, files=files, headers=other)
    assert r.status_code == 403 and "another device" in r.json()["error"]
    assert client.post("/v1/clips", data={"meta": meta}, files=files, headers=dev).status_code == 200
    # the other device re-using the clip's UUID learns nothing about it (no confirmation leaks)
    import json

    bare = json.dumps({**json.loads(meta), "detection_uuid": None})
    r = client.post("/v1/clips", data={"meta": bare}, files=files, headers=other)
    assert r.status_code == 403 and "confirmation" not in r.json()
    fb = {
        "uuid": "5a2b7c1e-0000-4000-8000-000000000001",
        "detection_uuid": d["uuid"],
        "kind": "confirmed",
        "created_at": t["started_at"],
    }
    assert client.post("/v1/feedback", json=fb, headers=other).status_code == 403


def test_revocation_takes_effect_on_the_next_request(client, store):
    token = store.add_device("to-be-revoked")
    assert client.post("/v1/sync", json={}, headers=auth(token)).status_code == 200
    store.revoke_device("to-be-revoked")
    r = client.post("/v1/sync", json={}, headers=auth(token))
    assert r.status_code == 401 and "revoked" in r.json()["error"]
    assert client.get("/v1/confirmations", headers=auth(token)).status_code == 401


def test_a_lost_confirmation_is_made_on_reupload(client, cloud_env, store):
    """A clip row without its confirmation (the replica died in between) gets one when the device
    re-sends the clip, instead of an empty acknowledgement forever."""
    from cloud.schemas import ClipMeta

    dev = auth(cloud_env["device"])
    audio = real_clip(5.0)
    meta = clip_meta(audio)
    me = store.authenticate(cloud_env["device"])
    assert store.add_clip(me.id, ClipMeta.model_validate_json(meta), "/lost.ogg").value == "accepted"
    r = client.post(
        "/v1/clips", data={"meta": meta}, files={"audio": ("c.ogg", audio, "audio/ogg")}, headers=dev
    )
    assert r.status_code == 200 and r.json()["duplicate"] is True
    assert r.json()["confirmation"]["species"] and store.confirmation(r.json()["uuid"]) is not None
