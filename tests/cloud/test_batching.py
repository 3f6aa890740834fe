"""A real ``silencio cloud serve``: concurrent ``/identify`` requests reach the Scorer together and
are batched (its ``silencio_scorer_batch_windows`` histogram), none is shed, and each answer is the
one the request gets alone."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.conftest import MINI, REPO


def _clips(n: int) -> list[bytes]:
    import soundfile as sf

    from shared_features import DEFAULT, load_audio

    x = load_audio(MINI / "train_soundscapes" / "H02_20230420_074000.ogg")
    out = []
    for k in range(n):
        buf = io.BytesIO()
        seg = x[k * DEFAULT.window_samples : (k + 1) * DEFAULT.window_samples]
        sf.write(buf, seg, DEFAULT.sample_rate, format="WAV", subtype="FLOAT")
        out.append(buf.getvalue())
    return out


def _batches(base: str, path: str = "batch") -> tuple[float, float]:
    """Windows and calls so far of the Scorer's batched (``batch``) or lone (``alone``) path."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    got = {}
    for kind in ("sum", "count"):
        m = re.findall(rf"^silencio_scorer_{path}_windows_{kind}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.M)
        got[kind] = sum(float(v) for v in m)
    return got["sum"], got["count"]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_concurrent_requests_are_batched_and_scored_as_alone(tmp_path):
    from silencio.demo import _free_port, _stop

    port = _free_port()
    env = {**os.environ, "SILENCIO_HOME": str(tmp_path / "home"), "BENTOML_HOME": str(tmp_path / "bentoml")}
    cmd = [sys.executable, "-m", "silencio", "cloud", "serve", "--port", str(port)]
    cmd += ["--taxonomy", str(MINI / "taxonomy.csv")]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"server exited: {proc.stdout.read().decode()[-3000:]}")
            time.sleep(1)
        else:
            pytest.fail("server not ready within 180 s")
        clips = _clips(12)

        def identify(body: bytes) -> dict:
            r = httpx.post(
                f"{base}/identify",
                files={"audio": ("c.wav", body, "audio/wav")},
                data={"threshold": "0", "top_k": "10"},
                timeout=120,
            )
            assert r.status_code == 200, r.text
            return r.json()

        identify(clips[0])  # warm-up: the batcher calibrates on its first calls
        s0, c0 = _batches(base)
        a0, n0 = _batches(base, "alone")
        with ThreadPoolExecutor(len(clips)) as ex:
            together = list(ex.map(identify, clips))
        s1, c1 = _batches(base)
        a1, n1 = _batches(base, "alone")
        alone = [identify(c) for c in clips]
        s2, c2 = _batches(base)
        a2, n2 = _batches(base, "alone")
    finally:
        _stop(proc)
    windows, calls = s1 - s0 + a1 - a0, c1 - c0 + n1 - n0  # the first of them may find nothing in flight
    assert windows == len(clips)
    assert calls < len(clips), f"{len(clips)} concurrent requests were scored in {calls} calls: no batching"
    # one request at a time: each goes past the batcher (no wait for batch-mates that cannot come)
    assert (s2 - s1, c2 - c1) == (0, 0) and (a2 - a1, n2 - n1) == (len(clips), len(clips))
    for a, b in zip(together, alone):
        pa = {s["code"]: s["probability"] for s in a["windows"][0]["species"]}
        pb = {s["code"]: s["probability"] for s in b["windows"][0]["species"]}
        common = sorted(pa.keys() & pb.keys())  # top 10 of each; a tie at the 10th may differ
        assert len(common) >= 8 and max(pa.values()) > 0
        np.testing.assert_allclose([pa[k] for k in common], [pb[k] for k in common], atol=1.1e-4)
