"""What the device checks before installing a release: the announcement's Ed25519 signature against
the pinned key (unsigned, tampered, wrong key, rotated keys, forged rotations), and safe extraction
of crafted tar archives (traversal, absolute paths, links, devices, FIFOs, oversize members)."""

from __future__ import annotations

import base64
import io
import os
import tarfile
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.errors import UpdateError
from edge.release import ExtractLimits, safe_extract, verify_announcement
from shared_features.signature import KeyRotation, ReleaseStatement, key_id, public_key_text


# ---------------------------------------------------------------------------------- signatures
class Key:
    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()
        raw = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public = public_key_text(raw)
        self.id = key_id(self.public)

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.private.sign(data)).decode()

    def rotate_to(self, new: Key) -> dict[str, str]:
        r = KeyRotation(self.id, new.id, new.public, "2025-06-01T00:00:00+00:00", "")
        return replace(r, signature=self.sign(r.payload())).to_dict()


def announcement(key: Key, rotations=(), **fields) -> dict:
    st = ReleaseStatement(
        name="student",
        version="7",
        sha256="ab" * 32,
        bytes=4096,
        feature_fingerprint="fv1-abc",
        labels_sha256="cd" * 32,
        thresholds_sha256=None,
        signed_at="2025-06-02T00:00:00+00:00",
        key_id=key.id,
    )
    info = {**st.to_dict(), "metrics": {}, "download": "/v1/releases/current/download"}
    info.update(signature=key.sign(st.canonical()), key_rotations=list(rotations))
    info.update(fields)  # changed after signing: the tampering under test
    return info


def test_a_signed_announcement_verifies_with_the_pinned_key():
    k = Key()
    v = verify_announcement(announcement(k), k.public)
    assert v.statement.version == "7" and v.signer == k.public and not v.rotated


def test_no_pinned_key_refuses_every_release_and_names_enroll():
    k = Key()
    for pinned in (None, ""):
        with pytest.raises(UpdateError, match="silencio edge enroll --cloud URL --token TOKEN --release-key"):
            verify_announcement(announcement(k), pinned)


def test_unsigned_release_is_refused():
    k = Key()
    for missing in ({"signature": None}, {"signature": ""}, {"key_id": None}):
        with pytest.raises(UpdateError, match="not signed"):
            verify_announcement(announcement(k, **missing), k.public)


@pytest.mark.parametrize(
    "field, value",
    [
        ("version", "8"),
        ("sha256", "ef" * 32),
        ("bytes", 4097),
        ("feature_fingerprint", "fv1-other"),
        ("labels_sha256", "00" * 32),
        ("thresholds_sha256", "11" * 32),
        ("name", "other"),
        ("signed_at", "2030-01-01T00:00:00+00:00"),
    ],
)
def test_a_tampered_announcement_is_refused(field, value):
    k = Key()
    with pytest.raises(UpdateError, match="does not verify"):
        verify_announcement(announcement(k, **{field: value}), k.public)


def test_a_corrupted_or_malformed_signature_is_refused():
    k = Key()
    info = announcement(k)
    sig = bytearray(base64.b64decode(info["signature"]))
    sig[0] ^= 1
    with pytest.raises(UpdateError, match="does not verify"):
        verify_announcement({**info, "signature": base64.b64encode(bytes(sig)).decode()}, k.public)
    with pytest.raises(UpdateError, match="base64"):
        verify_announcement({**info, "signature": "not base64!"}, k.public)
    with pytest.raises(UpdateError, match="bytes"):
        verify_announcement({**info, "bytes": "4096"}, k.public)


def test_a_release_signed_by_another_key_is_refused():
    pinned, other = Key(), Key()
    with pytest.raises(UpdateError, match=f"signed by key {other.id}.*trusts key {pinned.id}"):
        verify_announcement(announcement(other), pinned.public)
    # the same key id claimed, but another key signed: the signature fails
    with pytest.raises(UpdateError, match="does not verify"):
        verify_announcement(announcement(other, key_id=pinned.id), pinned.public)


def test_rotated_keys_are_accepted_only_through_rotations_the_pinned_key_signed():
    k1, k2, k3 = Key(), Key(), Key()
    chain = [k1.rotate_to(k2), k2.rotate_to(k3)]
    v = verify_announcement(announcement(k3, chain), k1.public)  # two rotations
    assert v.signer == k3.public and v.rotated and v.signer_id == k3.id
    assert verify_announcement(announcement(k3, chain), k2.public).signer == k3.public
    assert not verify_announcement(announcement(k3, chain), k3.public).rotated
    # no chain published: refused
    with pytest.raises(UpdateError, match="no rotation signed by it"):
        verify_announcement(announcement(k3, chain[1:]), k1.public)
    # a forged rotation: k1 → attacker, signed by the attacker's own key
    attacker = Key()
    forged = KeyRotation(k1.id, attacker.id, attacker.public, "2025-06-01T00:00:00+00:00", "")
    forged = replace(forged, signature=attacker.sign(forged.payload())).to_dict()
    with pytest.raises(UpdateError, match="rotation .* does not verify"):
        verify_announcement(announcement(attacker, [forged]), k1.public)
    # a rotation whose new key is swapped after signing
    swapped = {**k1.rotate_to(k2), "new_public_key": attacker.public, "new_key_id": attacker.id}
    with pytest.raises(UpdateError, match="does not verify"):
        verify_announcement(announcement(attacker, [swapped]), k1.public)


def test_a_malformed_pinned_key_is_refused():
    k = Key()
    for bad in ("ed25519:abc", "rsa:AAAA", "ed25519:" + base64.b64encode(b"x" * 31).decode()):
        with pytest.raises(UpdateError, match="key"):
            verify_announcement(announcement(k), bad)


# ---------------------------------------------------------------------------------- safe extraction
def make_tar(path, members) -> None:
    """``members``: (TarInfo, data or None)."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def entry(name: str, data: bytes = b"x", kind=tarfile.REGTYPE, **kw):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data if kind == tarfile.REGTYPE else None


def good_members():
    return [
        entry("package", kind=tarfile.DIRTYPE),
        entry("package/package.json", b"{}"),
        entry("package/model.onnx", b"\0" * 1000),
        entry("thresholds.json", b"{}"),
    ]


def listing(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_plain_archive_is_extracted(tmp_path):
    make_tar(tmp_path / "ok.tar", good_members())
    dest = tmp_path / "dest"
    dest.mkdir()
    names = safe_extract(tmp_path / "ok.tar", dest)
    assert names == ["package", "package/package.json", "package/model.onnx", "thresholds.json"]
    assert (dest / "package" / "model.onnx").read_bytes() == b"\0" * 1000
    assert oct((dest / "thresholds.json").stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize(
    "bad, words",
    [
        (entry("../evil.txt"), "leaves the destination"),
        (entry("package/../../evil.txt"), "leaves the destination"),
        (entry("package/./../../../evil.txt"), "leaves the destination"),
        (entry("/tmp/evil.txt"), "absolute path"),
        (entry("//etc/evil.txt"), "absolute path"),
        (entry("package/link", kind=tarfile.SYMTYPE, linkname="/etc/passwd"), "symbolic link"),
        (entry("package/rel", kind=tarfile.SYMTYPE, linkname="../../x"), "symbolic link"),
        (entry("package/hard", kind=tarfile.LNKTYPE, linkname="package/model.onnx"), "hard link"),
        (entry("package/tty", kind=tarfile.CHRTYPE, devmajor=5, devminor=0), "character device"),
        (entry("package/sda", kind=tarfile.BLKTYPE, devmajor=8, devminor=0), "block device"),
        (entry("package/pipe", kind=tarfile.FIFOTYPE), "FIFO"),
        (entry("package/package.json", b"{}"), "appears twice"),
        (entry("package/model.onnx/inner", b"x"), "inside a file"),
        (entry("./"), "destination itself"),
    ],
)
def test_hostile_members_are_refused_before_anything_is_written(tmp_path, bad, words):
    make_tar(tmp_path / "bad.tar", [*good_members(), bad])
    dest = tmp_path / "a" / "b" / "dest"
    dest.mkdir(parents=True)
    before = listing(tmp_path)
    with pytest.raises(UpdateError, match=words):
        safe_extract(tmp_path / "bad.tar", dest)
    assert listing(tmp_path) == before and list(dest.iterdir()) == []  # nothing written anywhere


def test_oversize_members_total_size_member_count_and_depth_are_refused(tmp_path):
    limits = ExtractLimits(max_members=10, max_member_bytes=2000, max_total_bytes=3000, max_depth=4)
    cases = [
        ([entry("big.bin", b"\0" * 2001)], "2001 bytes"),
        ([entry(f"f{i}.bin", b"\0" * 1000) for i in range(4)], "more than 3000 bytes"),
        ([entry(f"f{i}", b"") for i in range(11)], "more than 10 members"),
        ([entry("a/b/c/d/e", b"")], "deeper than 4"),
    ]
    for i, (members, words) in enumerate(cases):
        make_tar(tmp_path / f"{i}.tar", members)
        dest = tmp_path / f"dest{i}"
        dest.mkdir()
        with pytest.raises(UpdateError, match=words):
            safe_extract(tmp_path / f"{i}.tar", dest, limits)
        assert list(dest.iterdir()) == []


def test_a_header_that_lies_about_its_size_and_non_tar_input_are_refused(tmp_path):
    # a header that declares more data than the archive holds (truncated download)
    make_tar(tmp_path / "t.tar", good_members())
    blob = (tmp_path / "t.tar").read_bytes()
    (tmp_path / "trunc.tar").write_bytes(blob[:2500])  # model.onnx: its header, part of its data
    dest = tmp_path / "d1"
    dest.mkdir()
    with pytest.raises(UpdateError):
        safe_extract(tmp_path / "trunc.tar", dest)
    for name, data in (("junk.tar", os.urandom(3000)), ("empty.tar", b"")):
        (tmp_path / name).write_bytes(data)
        d = tmp_path / f"d-{name}"
        d.mkdir()
        with pytest.raises(UpdateError, match="tar"):
            safe_extract(tmp_path / name, d)
    # a compressed archive is not what the cloud publishes: refused, not decompressed
    with tarfile.open(tmp_path / "c.tar.gz", "w:gz") as tar:
        info, data = entry("package/package.json", b"{}")
        tar.addfile(info, io.BytesIO(data))
    d = tmp_path / "d-gz"
    d.mkdir()
    with pytest.raises(UpdateError, match="uncompressed tar"):
        safe_extract(tmp_path / "c.tar.gz", d)
