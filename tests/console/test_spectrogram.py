"""The review page's spectrogram is the shared log-mel (the models' own features), rendered as a
valid PNG on the server; a clip that cannot be decoded is a clear error, not a 500."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from tests.console.conftest import login


def decode_png(data: bytes) -> np.ndarray:
    """8-bit RGB, filter type 0 rows (what the console writes): ``[h, w, 3] uint8``."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(kind + body), kind
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + n
    w, h, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color) == (8, 2)
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + 3 * w)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, 3)


def test_png_round_trip():
    from cloud.console.spectrogram import png

    img = np.random.default_rng(0).integers(0, 256, (7, 11, 3), dtype=np.uint8)
    assert (decode_png(png(img)) == img).all()


def test_spectrogram_is_the_shared_log_mel(client, world):
    from cloud.console.spectrogram import colormap
    from shared_features import DEFAULT, load_audio, log_mel

    login(client, world.tokens["ana"])
    clip = world.store.clip(world.clips["disagree"])
    r = client.get(f"/console/clips/{clip.uuid}/spectrogram.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = decode_png(r.content)
    # a 6 s clip: two 5 s windows (the second padded), each [n_mels, n_frames], side by side
    assert img.shape == (DEFAULT.n_mels, 2 * DEFAULT.n_frames, 3)
    x = load_audio(clip.path, DEFAULT, max_duration=None)
    first = log_mel(x[: DEFAULT.window_samples], DEFAULT)  # computed here, independently
    idx = np.round(np.clip((first + 2.5) / 6.0, 0, 1) * 255).astype(np.uint8)
    expected = colormap()[idx[::-1]]  # low frequencies at the bottom
    assert np.abs(img[:, : DEFAULT.n_frames].astype(int) - expected.astype(int)).max() <= 1
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # a real picture, not a flat one


def test_a_clip_that_cannot_be_decoded(client, world):
    login(client, world.tokens["ana"])
    clip = world.store.clip(world.clips["random"])
    with open(clip.path, "wb") as fh:
        fh.write(b"this is not audio at all" * 10)
    r = client.get(f"/console/clips/{clip.uuid}/spectrogram.png")
    assert r.status_code == 400 and "cannot be decoded" in r.text
    import os

    os.unlink(clip.path)
    assert client.get(f"/console/clips/{clip.uuid}/audio").status_code == 404
    assert client.get(f"/console/clips/{clip.uuid}/spectrogram.png").status_code == 404
    assert client.get("/console/review").status_code == 200  # the page itself still renders
