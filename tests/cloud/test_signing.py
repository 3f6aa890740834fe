"""The cloud's release signing key and signed publication: ``silencio cloud keygen`` (0600, never
printed, refuses to overwrite, --rotate, --show), publishing with no key (one is created and
logged), what the signature covers, release directories with thresholds, and the archive writer
that refuses links; ``silencio edge enroll`` against the live service."""

from __future__ import annotations

import json
import logging
import os
import stat
import tarfile

import pytest

from cloud.errors import BadRequest, SigningError
from cloud.service import Cloud
from cloud.settings import CloudSettings
from cloud.signing import KEY_FILE, PUBLIC_FILE, keys_dir, load_key, rotations
from shared_features.signature import ReleaseStatement, key_id, verify_release
from silencio.cli import main
from tests.conftest import tiny_edge_package


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    from shared_features import LabelSpace
    from tests.conftest import MINI

    labels = LabelSpace.from_taxonomy_csv(MINI / "taxonomy.csv")
    return tiny_edge_package(tmp_path_factory.mktemp("pkg"), labels, version="5", seed=5)


def test_keygen_writes_a_private_key_only_its_owner_reads_and_prints_only_the_public_key(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("SILENCIO_HOME", str(tmp_path))
    old = os.umask(0o000)  # whatever the umask, the key is 0600
    try:
        assert main(["cloud", "keygen"]) == 0
    finally:
        os.umask(old)
    out = capsys.readouterr().out
    key = load_key(tmp_path)
    priv = keys_dir(tmp_path) / KEY_FILE
    assert (
        stat.S_IMODE(priv.stat().st_mode) == 0o600
        and stat.S_IMODE(keys_dir(tmp_path).stat().st_mode) == 0o700
    )
    assert key.public_key in out and key.key_id in out and "enroll" in out
    assert "PRIVATE" not in out and priv.read_text().split("\n")[1] not in out  # never printed
    assert (keys_dir(tmp_path) / PUBLIC_FILE).read_text().strip() == key.public_key
    # a second keygen refuses to overwrite (exit 2, one line naming --rotate)
    assert main(["cloud", "keygen"]) == 2
    assert "--rotate" in capsys.readouterr().err and load_key(tmp_path).key_id == key.key_id
    assert main(["cloud", "keygen", "--show"]) == 0
    assert key.public_key in capsys.readouterr().out
    # a key other users may read is refused, with the command that fixes it
    priv.chmod(0o644)
    with pytest.raises(SigningError, match="chmod 600"):
        load_key(tmp_path)
    priv.chmod(0o600)


def test_rotate_signs_the_new_key_with_the_old_one_and_retires_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SILENCIO_HOME", str(tmp_path))
    assert main(["cloud", "keygen", "--rotate"]) == 2  # nothing to rotate yet
    assert "keygen" in capsys.readouterr().err
    assert main(["cloud", "keygen"]) == 0
    first = load_key(tmp_path)
    assert main(["cloud", "keygen", "--rotate"]) == 0
    second = load_key(tmp_path)
    out = capsys.readouterr().out
    assert second.key_id != first.key_id and second.public_key in out and first.key_id in out
    retired = keys_dir(tmp_path) / "retired" / f"{first.key_id}.key"
    assert retired.exists() and stat.S_IMODE(retired.stat().st_mode) == 0o600
    assert main(["cloud", "keygen", "--rotate"]) == 0
    third = load_key(tmp_path)
    chain = rotations(tmp_path)
    assert [(r.old_key_id, r.new_key_id) for r in chain] == [
        (first.key_id, second.key_id),
        (second.key_id, third.key_id),
    ]
    st = ReleaseStatement("s", "1", "a" * 64, 1, "fv1-x", "b" * 64, None, "2025-01-01", third.key_id)
    from cloud.signing import sign_release

    assert verify_release(st, sign_release(third, st), first.public_key, chain) == third.public_key


def test_publishing_without_a_key_creates_one_and_says_so(tmp_path, package, caplog, capsys, monkeypatch):
    """A fresh install still publishes (signed); the warning and the CLI name the key to pin."""
    monkeypatch.setenv("SILENCIO_HOME", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="cloud.service"):
        assert main(["cloud", "release", str(package)]) == 0
    key = load_key(tmp_path)
    assert any(key.key_id in r.getMessage() and "enroll" in r.getMessage() for r in caplog.records)
    out = capsys.readouterr().out
    assert f"signed by key {key.key_id}" in out and key.public_key in out and "created" in out
    cloud = Cloud(CloudSettings(home=tmp_path))
    info = cloud.release_info(None, check=False)
    st = ReleaseStatement.from_dict(info)
    assert verify_release(st, info["signature"], key.public_key) == key.public_key
    assert st.sha256 == info["sha256"] and st.bytes == os.path.getsize(cloud.store.current_release().path)
    assert st.thresholds_sha256 is None and st.labels_sha256 and st.feature_fingerprint.startswith("fv1-")
    # publishing again signs with the same key, says nothing about creating one
    assert main(["cloud", "release", str(package)]) == 0
    assert "created" not in capsys.readouterr().out and load_key(tmp_path).key_id == key.key_id


def test_a_release_directory_with_thresholds_is_signed_over_its_thresholds(tmp_path, package):
    import hashlib
    import shutil

    rel = tmp_path / "student-9"
    shutil.copytree(package, rel / "package")
    (rel / "thresholds.json").write_text(json.dumps({"grekis": 0.4}))
    files = {
        str(p.relative_to(rel)): {
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            "bytes": p.stat().st_size,
        }
        for p in sorted(rel.rglob("*"))
        if p.is_file()
    }
    (rel / "release.json").write_text(json.dumps({"name": "student", "version": "9", "files": files}))
    cloud = Cloud(CloudSettings(home=tmp_path / "home"))
    info = cloud.publish_release(rel)
    assert info["version"] == "9" and info["name"] == "student"
    assert info["thresholds_sha256"] == hashlib.sha256((rel / "thresholds.json").read_bytes()).hexdigest()
    names = tarfile.open(cloud.store.current_release().path).getnames()
    assert {"package/package.json", "thresholds.json", "release.json"} <= set(names)
    # a file that does not match release.json is refused before anything is signed or published
    (rel / "thresholds.json").write_text(json.dumps({"grekis": 0.1}))
    with pytest.raises(BadRequest, match="thresholds.json does not match"):
        cloud.publish_release(rel)
    assert cloud.store.current_release().version == "9"


def test_the_archive_holds_plain_files_only(tmp_path, package):
    import shutil

    pkg = tmp_path / "pkg"
    shutil.copytree(package, pkg)
    os.symlink("/etc/passwd", pkg / "passwd")
    cloud = Cloud(CloudSettings(home=tmp_path / "home"))
    with pytest.raises(BadRequest, match="only plain files"):
        cloud.publish_release(pkg)
    assert cloud.store.current_release() is None
    assert not list((tmp_path / "home" / "cloud" / "releases").glob("*.partial"))
    (pkg / "passwd").unlink()
    cloud.publish_release(pkg)
    with tarfile.open(cloud.store.current_release().path) as tar:
        for m in tar.getmembers():
            assert (m.isfile() or m.isdir()) and m.uid == 0 and m.uname == "" and m.mode in (0o644, 0o755)


def test_edge_enroll_pins_the_key_and_the_settings_read_it(
    tmp_path, package, monkeypatch, capsys, cloud_env, client
):
    """``silencio edge enroll`` against the live service: a refused token writes nothing; then the
    enrolment file (0600) feeds EdgeSettings below the environment."""
    import httpx

    from edge.enrolment import enroll, enrolment_path
    from edge.errors import EdgeError
    from edge.settings import EdgeSettings

    class Plain(httpx.BaseTransport):  # the in-process app's stream, as plain bytes
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            resp = client._transport.handle_request(request)
            resp.read()
            return httpx.Response(resp.status_code, headers=resp.headers, content=resp.content)

    home = tmp_path / "device"
    transport = Plain()
    Cloud(CloudSettings(home=cloud_env["home"])).publish_release(package)
    key = load_key(cloud_env["home"])
    with pytest.raises(EdgeError, match="refused this token"):
        enroll(home, "http://testserver", "wrong-token", key.public_key, transport=transport)
    assert not enrolment_path(home).exists()
    with pytest.raises(EdgeError, match="release-key"):
        enroll(home, "http://testserver", cloud_env["device"], "ed25519:nope", transport=transport)
    res = enroll(
        home,
        "http://testserver",
        cloud_env["device"],
        str(keys_dir(cloud_env["home"]) / PUBLIC_FILE),
        transport=transport,
    )
    assert res.key_id == key.key_id and "verifies" in res.release
    assert stat.S_IMODE(enrolment_path(home).stat().st_mode) == 0o600
    s = EdgeSettings(home=home)
    assert (s.cloud_url, s.token, s.release_key) == ("http://testserver", cloud_env["device"], key.public_key)
    monkeypatch.setenv("SILENCIO_EDGE_CLOUD_URL", "http://elsewhere")  # the environment wins over the file
    assert EdgeSettings(home=home).cloud_url == "http://elsewhere"
    # a device pinned on another key is told, at enrolment, that the current release would be refused
    other = enroll(
        tmp_path / "d2",
        "http://testserver",
        cloud_env["device"],
        "ed25519:" + "A" * 43 + "=",
        transport=transport,
    )
    assert "would be refused" in other.release and key_id("ed25519:" + "A" * 43 + "=") in other.release


def test_edge_enroll_command_and_update_without_a_pinned_key(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SILENCIO_HOME", str(tmp_path))
    assert main(["cloud", "keygen"]) == 0
    pub = load_key(tmp_path).public_key
    capsys.readouterr()
    assert (
        main(["edge", "enroll", "--cloud", "http://127.0.0.1:9", "--token", "t0k3n", "--release-key", pub])
        == 2
    )
    assert "--offline" in capsys.readouterr().err  # the cloud cannot be reached: nothing written
    argv = [
        "edge",
        "enroll",
        "--cloud",
        "http://127.0.0.1:9",
        "--token",
        "t0k3n",
        "--release-key",
        pub,
        "--offline",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert key_id(pub) in out and "t0k3n" not in out  # the token is never printed
