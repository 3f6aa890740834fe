"""Model updates from the cloud's release: signed by the cloud's key and verified against the key
the device pinned at enrolment before anything is downloaded; verified download; safe extraction;
shadow evaluation against the installed model on stored clips; atomic switch; rollback. Every
refused release (no pinned key, unsigned, tampered archive, tampered announcement, wrong key, a
hostile archive signed by the real key) leaves the installed model untouched; a rotated key is
accepted through the rotation the pinned key signed, and then pinned."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from edge.agent import Agent
from edge.capture import FileSource
from edge.errors import UpdateError
from edge.store import open_store
from edge.sync import SyncClient
from edge.updater import check_and_update, rollback
from tests.conftest import tiny_edge_package

from .conftest import FakeScorer, FlakyTransport, tone_then_silence


class Recording(httpx.BaseTransport):
    """Passes requests on and remembers their paths (was the archive downloaded?)."""

    def __init__(self, inner: httpx.BaseTransport, rewrite=None) -> None:
        self.inner, self.paths, self.rewrite = inner, [], rewrite

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        resp = self.inner.handle_request(request)
        resp.read()
        content = resp.content
        if (
            self.rewrite is not None
            and request.url.path == "/v1/releases/current"
            and resp.status_code == 200
        ):
            import json

            content = json.dumps(self.rewrite(json.loads(content))).encode()
        headers = [(k, v) for k, v in resp.headers.items() if k.lower() != "content-length"]
        return httpx.Response(resp.status_code, headers=headers, content=content, request=request)

    @property
    def downloads(self) -> int:
        return sum(p.endswith("/download") for p in self.paths)


def _cloud(cloud):
    from cloud.service import Cloud
    from cloud.settings import CloudSettings

    return Cloud(CloudSettings(home=cloud["home"]), store=cloud["store"])


def _publish(tmp_path, labels, cloud, version):
    package = tiny_edge_package(tmp_path / f"edge{version}", labels, version=version, seed=int(version))
    return _cloud(cloud).publish_release(package)


def _public_key(cloud) -> str:
    from cloud.signing import load_key

    return load_key(cloud["home"]).public_key


def _client(cloud, store, rewrite=None) -> tuple[SyncClient, Recording]:
    rec = Recording(cloud["client"]._transport, rewrite)
    return SyncClient(store, "http://testserver", cloud["token"], transport=rec, retries=0), rec


def _state(store, model_dir: Path) -> tuple:
    """The installed model as a device sees it: active and previous rows, every file and its hash."""
    files = {
        str(p.relative_to(model_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(model_dir.rglob("*"))
        if p.is_file()
    }
    a, prev = store.active_model(), store.previous_model()
    return (a and (a.version, a.sha256, a.path)), (prev and prev.version), files


def test_update_shadow_switch_rollback_and_corruption(tmp_path, labels, edge_settings, cloud):
    s = edge_settings.model_copy(update={"random_clip_rate": 1.0})
    agent = Agent(s, scorer=FakeScorer(labels), seed=0)  # the installed model: a fake one
    agent.start_tour()
    sf.write(tmp_path / "a.wav", tone_then_silence(6, 6), 32_000)
    agent.run(FileSource(tmp_path / "a.wav"))
    client = SyncClient(
        agent.store,
        "http://testserver",
        cloud["token"],
        transport=FlakyTransport(cloud["client"]._transport, 0.0),
    )
    info = _publish(tmp_path, labels, cloud, "1")
    key = _public_key(cloud)
    assert info["key_id"] and info["signature"] and info["public_key"] == key
    res = check_and_update(client, agent.store, s.model_dir, agent.scorer, release_key=key)
    assert res["updated"] and res["version"] == "1" and res["key_id"] == info["key_id"]
    assert res["shadow"]["windows"] >= 3 and 0 <= res["shadow"]["top1_agreement"] <= 1
    assert agent.store.active_model().sha256 == info["sha256"]
    # a new agent runs the installed package (ONNX), not BirdNET
    a2 = Agent(s, seed=0)
    assert "onnx" in a2.scorer.description and a2.scorer.version.endswith(" 1")
    assert check_and_update(client, agent.store, s.model_dir, a2.scorer, release_key=key)["updated"] is False
    _publish(tmp_path, labels, cloud, "2")
    assert check_and_update(client, agent.store, s.model_dir, a2.scorer, release_key=key)["version"] == "2"
    assert rollback(agent.store) == {"active": "1", "was": "2"}
    assert Agent(s, seed=0).scorer.version.endswith(" 1")
    # a corrupted download is refused (its sha256 is not the signed one) and the active model stays
    _publish(tmp_path, labels, cloud, "3")
    rel = cloud["store"].current_release()
    blob = bytearray(open(rel.path, "rb").read())
    blob[len(blob) // 2] ^= 0xFF
    open(rel.path, "wb").write(bytes(blob))
    before = _state(agent.store, s.model_dir)
    with pytest.raises(UpdateError, match="sha256"):
        check_and_update(client, agent.store, s.model_dir, a2.scorer, release_key=key)
    assert agent.store.active_model().version == "1" and _state(agent.store, s.model_dir) == before


@pytest.fixture
def installed(tmp_path, labels, edge_settings, cloud):
    """A device that pinned the cloud's key and installed a signed release, and a second package."""
    info = _publish(tmp_path, labels, cloud, "11")
    store = open_store(edge_settings.db_path)
    client, rec = _client(cloud, store)
    key = _public_key(cloud)
    assert check_and_update(client, store, edge_settings.model_dir, None, release_key=key)["version"] == "11"
    other = tiny_edge_package(tmp_path / "edge12", labels, version="12", seed=12)
    yield {
        "store": store,
        "dir": edge_settings.model_dir,
        "key": key,
        "info": info,
        "other": other,
        "before": _state(store, edge_settings.model_dir),
    }
    client.close()
    store.close()


def _refused(cloud, dev, match, *, key="pinned", rewrite=None, downloaded=0) -> None:
    client, rec = _client(cloud, dev["store"], rewrite)
    with pytest.raises(UpdateError, match=match):
        check_and_update(
            client, dev["store"], dev["dir"], None, release_key=dev["key"] if key == "pinned" else key
        )
    client.close()
    assert rec.downloads == downloaded, rec.paths  # refused before (or at) the download
    assert _state(dev["store"], dev["dir"]) == dev["before"]  # the installed model untouched
    assert not [p for p in dev["dir"].iterdir() if p.name.startswith(".")]  # no staging left behind


def test_no_pinned_key_refuses_every_release_before_download(installed, cloud):
    _refused(cloud, installed, r"no release key is pinned.*silencio edge enroll --cloud URL", key=None)


def test_an_unsigned_release_is_refused_before_download(installed, cloud, tmp_path):
    rel = _cloud(cloud).publish_release(installed["other"])
    # the same archive recorded without its signature (as a release published before signing was)
    cloud["store"].publish_release(
        rel["version"], rel["sha256"], rel["feature_fingerprint"], cloud["store"].current_release().path, {}
    )
    assert (
        cloud["client"]
        .get("/v1/releases/current", headers={"authorization": f"Bearer {cloud['token']}"})
        .json()["signature"]
        is None
    )
    _refused(cloud, installed, "not signed")


def test_a_tampered_archive_is_refused_before_it_is_unpacked(installed, cloud):
    _cloud(cloud).publish_release(installed["other"])
    rel = cloud["store"].current_release()
    # another archive in its place, announced with its own sha256 under the old signature
    evil = Path(rel.path).with_name("evil.tar")
    with tarfile.open(evil, "w") as tar:
        tar.add(installed["other"], arcname="package")
        data = b"#!/bin/sh\necho owned\n"
        info = tarfile.TarInfo("package/run.sh")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    digest = hashlib.sha256(evil.read_bytes()).hexdigest()
    cloud["store"].publish_release(
        rel.version, digest, rel.feature_fingerprint, str(evil), rel.manifest, rel.signature
    )
    _refused(cloud, installed, "does not verify")
    # the file swapped on disk, the announcement unchanged: the download's sha256 is refused
    cloud["store"].publish_release(
        rel.version, rel.sha256, rel.feature_fingerprint, str(evil), rel.manifest, rel.signature
    )
    _refused(cloud, installed, "exceeds the signed|sha256|signed size", downloaded=1)


@pytest.mark.parametrize(
    "change",
    [
        {"version": "99"},
        {"feature_fingerprint": "fv1-0000"},
        {"labels_sha256": "0" * 64},
        {"thresholds_sha256": "0" * 64},
        {"bytes": 1},
    ],
)
def test_a_tampered_announcement_is_refused_before_download(installed, cloud, change):
    _cloud(cloud).publish_release(installed["other"])
    _refused(cloud, installed, "does not verify", rewrite=lambda info: {**info, **change})


def test_a_release_signed_by_another_key_is_refused(installed, cloud, tmp_path):
    from cloud.signing import keys_dir
    from shared_features.signature import key_id

    _cloud(cloud).publish_release(installed["other"])
    keys = keys_dir(cloud["home"])
    # the cloud lost its key and made a new one (no rotation): devices refuse its releases
    shutil.move(keys, tmp_path / "saved-keys")
    try:
        info = _cloud(cloud).publish_release(installed["other"])
        assert info["key_created"] and info["key_id"] != key_id(installed["key"])
        _refused(cloud, installed, f"signed by key {info['key_id']}.*trusts key {key_id(installed['key'])}")
    finally:
        shutil.rmtree(keys)
        shutil.move(tmp_path / "saved-keys", keys)


def test_a_hostile_archive_signed_by_the_real_key_is_refused_by_safe_extraction(installed, cloud, tmp_path):
    """A compromised publishing pipeline: the archive is signed, but holds a link out of the folder."""
    from cloud.signing import load_key, sign_release
    from cloud.store import ReleaseSignature
    from shared_features.signature import ReleaseStatement

    _cloud(cloud).publish_release(installed["other"])
    rel = cloud["store"].current_release()
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        tar.add(installed["other"], arcname="package")
        link = tarfile.TarInfo("package/escape")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../../etc"
        tar.addfile(link)
    digest, size = hashlib.sha256(evil.read_bytes()).hexdigest(), evil.stat().st_size
    key = load_key(cloud["home"])
    st = ReleaseStatement.from_dict({**rel.signature.statement, "sha256": digest, "bytes": size})
    sig = ReleaseSignature(sign_release(key, st), key.key_id, st.to_dict())
    cloud["store"].publish_release(rel.version, digest, rel.feature_fingerprint, str(evil), rel.manifest, sig)
    _refused(cloud, installed, "symbolic link", downloaded=1)


def test_a_rotated_key_is_accepted_through_the_signed_rotation_and_then_pinned(installed, cloud, tmp_path):
    from cloud.signing import rotate_key
    from edge.enrolment import enrolment_path, pin_release_key, read_enrolment
    from shared_features.signature import key_id

    home = tmp_path / "device_home"
    enrolment_path(home).parent.mkdir(parents=True)
    enrolment_path(home).write_text(json.dumps({"release_key": installed["key"]}))
    new, rotation = rotate_key(cloud["home"])
    assert rotation.old_key_id == key_id(installed["key"]) and new.key_id != rotation.old_key_id
    info = _cloud(cloud).publish_release(installed["other"])
    assert info["key_id"] == new.key_id and info["key_rotations"][-1]["new_key_id"] == new.key_id
    client, _ = _client(cloud, installed["store"])
    pinned = []
    res = check_and_update(
        client,
        installed["store"],
        installed["dir"],
        None,
        release_key=installed["key"],
        on_key_rotated=lambda k: pinned.append(pin_release_key(home, k)),
    )
    assert res["updated"] and res["key_rotated"] and res["key_id"] == new.key_id
    assert pinned and read_enrolment(home)["release_key"] == new.public_key
    assert oct(enrolment_path(home).stat().st_mode & 0o777) == "0o600"
    client.close()
