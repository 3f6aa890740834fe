"""Hostile uploads on the live service (in-process): limits in bytes — also for chunked bodies
without a Content-Length and for multipart file parts — and in decoded duration before a full
decode; crafted files get their documented status; a seeded fuzz run of random and mutated audio
over ``/identify``, ``/v1/identify`` and ``/v1/clips`` never gets a 5xx."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf

from benchmarks.hostile_audio import flac_silence_declaring, run, wav_header

from .conftest import auth, clip_meta


def _shape(r, status: int) -> str:
    body = r.json()
    assert r.status_code == status and body == {"error": body["error"], "status": status}, (
        r.status_code,
        r.text,
    )
    return body["error"]


def _post_all(client, token: str, data: bytes) -> list:
    return [
        client.post("/identify", files={"audio": ("a.flac", data)}),
        client.post("/v1/identify", content=data),
        client.post("/v1/identify", files={"audio": ("a.flac", data)}),
        client.post(
            "/v1/clips",
            data={"meta": clip_meta(data)},
            files={"audio": ("c.flac", data)},
            headers=auth(token),
        ),
    ]


def _wav(seconds: float, sr: int, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    x = 0.1 * np.sin(np.arange(int(seconds * sr))[:, None] * 0.05).repeat(channels, axis=1)
    sf.write(buf, x.astype(np.float32), sr, format="WAV")
    return buf.getvalue()


def test_small_files_that_decode_to_hours_are_413_on_every_upload_path(client, cloud_env):
    hours = flac_silence_declaring(3 * 3600)  # 270 KB: within the byte limits
    for r in _post_all(client, cloud_env["device"], hours):
        assert "10800.0 s is longer than the 600 s limit" in _shape(r, 413)
    unknown = flac_silence_declaring(3600, unknown_length=True)  # no length in the header
    for r in _post_all(client, cloud_env["device"], unknown):
        assert "decodes to more than the 600 s limit" in _shape(r, 413)


def test_sample_rates_and_channels_over_the_upload_limits_are_415(client, cloud_env):
    for data, words in (
        (_wav(0.5, 192_000), "sample rate 192000 Hz outside the accepted [1000, 96000] Hz"),
        (_wav(0.5, 32_000, channels=12), "12 channels (at most 8 accepted)"),
    ):
        for r in _post_all(client, cloud_env["device"], data):
            assert words in _shape(r, 415)
    pcm = (np.ones(32_000) * 1000).astype(np.int16).tobytes()
    for r in _post_all(client, cloud_env["device"], wav_header(1, 1, 16, len(pcm)) + pcm):
        assert "sample rate 1 Hz" in _shape(r, 415)


def _chunks(total: int, size: int = 64 * 1024):
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"\0" * n


def test_chunked_bodies_without_a_length_stop_at_the_byte_limit(client, cloud_env):
    """A body streamed without Content-Length is refused (413) once it passes the limit — also a
    multipart file part, which Starlette would otherwise spool to disk without a limit."""
    big = 8 * 1024 * 1024  # the fixture's limits: 3 MB uploads, 2 MB clips
    boundary = "xyz"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()

    def multipart():
        yield head
        yield from _chunks(big)
        yield f"\r\n--{boundary}--\r\n".encode()

    mp = {"content-type": f"multipart/form-data; boundary={boundary}"}
    _shape(client.post("/v1/identify", content=_chunks(big)), 413)
    _shape(client.post("/v1/identify", content=multipart(), headers=mp), 413)
    _shape(client.post("/identify", content=multipart(), headers=mp), 413)
    _shape(client.post("/v1/clips", content=multipart(), headers={**mp, **auth(cloud_env["device"])}), 413)
    _shape(
        client.post(
            "/v1/sync",
            content=_chunks(8 * 1024 * 1024),
            headers={"content-type": "application/json", **auth(cloud_env["device"])},
        ),
        413,
    )
    # a declared length over the limit is refused before the body is read
    r = client.post(
        "/v1/clips",
        content=b"x" * 10,
        headers={**mp, "content-length": str(big), **auth(cloud_env["device"])},
    )
    _shape(r, 413)


def test_clip_meta_cannot_claim_more_than_the_clip_limit(client, cloud_env):
    data = _wav(1.0, 32_000)
    meta = json.loads(clip_meta(data))
    meta["bytes"] = 3 * 1000 * 1000
    r = client.post(
        "/v1/clips",
        data={"meta": json.dumps(meta)},
        files={"audio": ("c.wav", data)},
        headers=auth(cloud_env["device"]),
    )
    _shape(r, 413)


@pytest.mark.slow
def test_fuzzed_uploads_never_get_a_server_error():
    """300 requests (100 seeded inputs: crafted, random, mutated WAV/FLAC/OGG/MP3/AIFF, each to
    the three upload endpoints) on a service in a watched worker process: 200 or a documented
    4xx in the error shape, no 5xx, no crash, no request over 30 s."""
    rep = run(load_audio=0, http=300, seed=2)
    assert rep.failures == [] and rep.cases == 300
    targets = {t for (t, _) in rep.counts}
    assert targets == {"/identify", "/v1/identify", "/v1/clips"}
    assert {o for (_, o) in rep.counts} <= {"200", "400", "413", "415", "422"}
    assert any(o == "200" for (_, o) in rep.counts) and any(o == "413" for (_, o) in rep.counts)


def test_a_streamed_multipart_file_part_is_cut_off_at_the_limit_not_spooled():
    """The multipart parser stops reading as soon as the body passes the limit: an endless file part
    costs the service the limit, not the disk."""
    import anyio
    from starlette.requests import Request

    from bentos.service import _bounded, _form
    from cloud.errors import PayloadTooLarge

    pulled = 0
    head = b'--xyz\r\nContent-Disposition: form-data; name="audio"; filename="a"\r\n\r\n'

    async def receive():
        nonlocal pulled
        body = head if pulled == 0 else b"\0" * 65536
        pulled += len(body)
        return {"type": "http.request", "body": body, "more_body": True}  # never ends

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/clips",
        "headers": [(b"content-type", b"multipart/form-data; boundary=xyz")],
        "query_string": b"",
    }

    async def main():
        async with _form(_bounded(Request(scope, receive), 1_000_000), max_files=1):
            pass

    with pytest.raises(PayloadTooLarge, match="1000000 byte limit"):
        anyio.run(main)
    assert 1_000_000 < pulled <= 1_000_000 + 65536
