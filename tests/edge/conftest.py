from __future__ import annotations

import random
import threading

import httpx
import numpy as np
import pytest

from shared_features import DEFAULT, LabelSpace
from tests.conftest import MINI, cloud_asgi


class FakeScorer:
    """A deterministic backend for the seams of the agent: species 0 scores high while the window
    is loud, species 1 scores near the threshold (uncertain) on every window."""

    needs_features = True
    version = "fake-1"
    description = "fake scorer (tests)"

    def __init__(self, labels: LabelSpace, loud_db: float = -30.0) -> None:
        self.labels = labels
        self.loud_db = loud_db

    def score(self, window: np.ndarray, feats: np.ndarray | None) -> np.ndarray:
        assert feats is not None and feats.shape == (DEFAULT.n_mels, DEFAULT.n_frames)
        p = np.zeros(len(self.labels), np.float32)
        rms = float(np.sqrt(np.mean(window.astype(np.float64) ** 2)))
        p[0] = 0.95 if 20 * np.log10(max(rms, 1e-9)) > self.loud_db else 0.02
        p[1] = 0.2
        return p


@pytest.fixture(scope="session")
def labels() -> LabelSpace:
    return LabelSpace.from_taxonomy_csv(MINI / "taxonomy.csv")


@pytest.fixture
def edge_settings(tmp_path):
    from edge.settings import EdgeSettings

    return EdgeSettings(
        home=tmp_path, taxonomy=MINI / "taxonomy.csv", random_clip_rate=0.0, detection_clip_rate=0.0
    )


def tone_then_silence(loud_s: float, quiet_s: float, sr: int = 32_000) -> np.ndarray:
    t = np.arange(int(loud_s * sr)) / sr
    loud = 0.3 * np.sin(2 * np.pi * 3000 * t).astype(np.float32)
    return np.concatenate([loud, np.zeros(int(quiet_s * sr), np.float32)])


class FlakyTransport(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport, p_fail: float, seed: int = 0) -> None:
        self.inner, self.p, self.rng = inner, p_fail, random.Random(seed)
        self.faults: dict[str, int] = {}

    def _fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.rng.random() < self.p:
            kind = self.rng.choice(["connect", "timeout", "lost_response", "500", "dropped_upload"])
            self._fault(kind)
            if kind == "connect":
                raise httpx.ConnectError("connection refused", request=request)
            if kind == "timeout":
                raise httpx.ReadTimeout("timed out", request=request)
            if kind == "500":
                return httpx.Response(500, json={"error": "injected"}, request=request)
            if kind == "dropped_upload":  # the connection drops while the body is sent
                raise httpx.WriteError("connection reset during upload", request=request)
            self._forward(request)  # the cloud processed it ...
            raise httpx.ReadError("connection lost before the response", request=request)  # ... we never hear
        return self._forward(request)

    def _forward(self, request: httpx.Request) -> httpx.Response:
        resp = self.inner.handle_request(request)
        resp.read()  # the in-process app's stream, as plain bytes for a plain httpx.Client
        return httpx.Response(resp.status_code, headers=resp.headers, content=resp.content, request=request)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    from starlette.testclient import TestClient

    from cloud.settings import CloudSettings
    from cloud.store import CloudStore

    home = tmp_path_factory.mktemp("cloud")
    mp = pytest.MonkeyPatch()
    mp.setenv("SILENCIO_HOME", str(home))
    mp.setenv("SILENCIO_CLOUD_TAXONOMY", str(MINI / "taxonomy.csv"))
    store = CloudStore(CloudSettings().db_path)
    token = store.add_device("edge-test")
    with TestClient(cloud_asgi(), raise_server_exceptions=False) as tc:
        yield {"client": tc, "token": token, "store": store, "home": home}
    mp.undo()


class FakeStatus:
    def __init__(self, overflow: bool) -> None:
        self.input_overflow = overflow


class FakeSoundDevice:
    """Stands in for the sounddevice module: its InputStream calls the real callback from a thread
    with prepared audio at the device's rate, and can 'lose' the device after some blocks."""

    def __init__(
        self,
        audio: np.ndarray,
        rate: int = 48_000,
        lose_after: int | None = None,
        overflow_every: int = 0,
        fail_opens: int = 0,
    ) -> None:
        self.audio, self.rate, self.lose_after = audio, rate, lose_after
        self.overflow_every, self.fail_opens, self.opened = overflow_every, fail_opens, 0

    def check_input_settings(self, device=None, samplerate=None, channels=None, dtype=None):
        if samplerate != self.rate:
            raise ValueError("Invalid sample rate")

    def query_devices(self, device=None, kind=None):
        return {"name": "fake mic", "default_samplerate": float(self.rate)}

    def InputStream(self, **kw):  # noqa: N802 - the sounddevice name
        if self.fail_opens > 0:
            self.fail_opens -= 1
            raise OSError("device unavailable")
        self.opened += 1
        return _FakeStream(self, **kw)


class _FakeStream:
    def __init__(self, sd, *, device, samplerate, channels, dtype, blocksize, callback, finished_callback):
        self.sd, self.block, self.callback, self.finished = sd, blocksize, callback, finished_callback
        self.active = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        sd = self.sd
        for k, i in enumerate(range(0, sd.audio.size, self.block)):
            if not self.active:
                return
            if sd.lose_after is not None and k == sd.lose_after and sd.opened == 1:
                self.active = False
                self.finished()
                return
            status = FakeStatus(bool(sd.overflow_every) and k % sd.overflow_every == sd.overflow_every - 1)
            self.callback(sd.audio[i : i + self.block, None], self.block, None, status)
        self.active = False
        self.finished()

    def start(self):
        self.active = True
        self._thread.start()

    def stop(self):
        self.active = False

    def close(self):
        pass
