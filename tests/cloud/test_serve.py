"""A real ``silencio cloud serve`` (BentoML) on 127.0.0.1, as an operator runs it: started with no
flags or with relative paths, called with httpx and a real recording, stopped with SIGTERM; its
workers die with it even when it is killed; a service that cannot start says why in one line and
exits. Every check looks only at the processes the test started (the tree under the pid it
recorded), never at the machine's other processes."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import MINI
from tests.process_tree import Proc, free_port, kill_all, port_in_use, tree, wait_gone

from .conftest import auth, detection, tour

SOUNDSCAPE = MINI / "train_soundscapes" / "H02_20230420_074000.ogg"


@dataclass
class Served:
    """A ``silencio cloud serve`` subprocess and every process seen in its tree."""

    proc: subprocess.Popen[bytes]
    port: int
    out: Path
    err: Path
    seen: dict[int, Proc] = field(default_factory=dict)
    probes: list[tuple[int | None, int | None]] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record(self) -> list[Proc]:
        procs = tree(self.proc.pid)
        self.seen.update((p.pid, p) for p in procs)
        return procs

    def wait_ready(self, timeout: float = 240) -> None:
        """Poll both probes until both answer 200; every earlier answer is kept in ``probes``
        (None: no answer yet — the port is not bound, or no worker accepts yet)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.record()
            if self.proc.poll() is not None:
                pytest.fail(f"server exited ({self.proc.returncode}): {self.err.read_text()[-3000:]}")
            codes = tuple(_status(f"{self.base}{p}") for p in ("/readyz", "/v1/ready"))
            self.probes.append(codes)  # type: ignore[arg-type]
            if codes == (200, 200):
                return
            time.sleep(0.5)
        pytest.fail(f"not ready within {timeout} s; probes {self.probes[-5:]}")

    def stop(self) -> None:
        """Test clean-up: kill what is left of the recorded tree."""
        kill_all(list(self.seen.values()))
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=3).status_code
    except httpx.HTTPError:
        return None


def serve(tmp_path: Path, *args: str, cwd: Path | None = None, port: int | None = None) -> Served:
    port = port or free_port()
    env = {
        **os.environ,
        "SILENCIO_HOME": str(tmp_path / "home"),
        "BENTOML_HOME": str(tmp_path / "bentoml"),
    }
    env.pop("SILENCIO_CLOUD_TAXONOMY", None)
    out, err = tmp_path / "serve.out", tmp_path / "serve.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "silencio", "cloud", "serve", "--port", str(port), *args],
            cwd=cwd or tmp_path,
            env=env,
            stdout=o,
            stderr=e,
            start_new_session=True,
        )
    return Served(proc, port, out, err)


def _before_ready_only_503(probes: list[tuple[int | None, int | None]]) -> None:
    """Readiness never says anything but 503 before it says 200 (or nothing, while the server
    process starts: no worker accepts yet): the answers of both probes in the order they came."""
    answers = [code for pair in probes for code in pair]
    first_ok = answers.index(200)
    assert set(answers[:first_ok]) <= {None, 503}, probes


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_relative_paths_identify_errors_docs_and_sigterm(tmp_path):
    from cloud.store import CloudStore

    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    shutil.copyfile(MINI / "taxonomy.csv", work / "tax.csv")
    token = CloudStore(work / "data" / "cloud.db").add_device("dev")
    s = serve(tmp_path, "--db", "data/cloud.db", "--taxonomy", "tax.csv", cwd=work)
    try:
        s.wait_ready()
        _before_ready_only_503(s.probes)
        print(f"probes until ready (/readyz, /v1/ready): {s.probes}")
        procs = s.record()
        assert len(procs) >= 3  # the server and its two workers (API, scorer)
        audio = SOUNDSCAPE.read_bytes()
        r = httpx.post(
            f"{s.base}/identify",
            files={"audio": ("s.ogg", audio, "audio/ogg")},
            data={"threshold": "0"},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["windows"]) == 12 and r.json()["windows"][0]["species"][0]["scientific_name"]
        # the relative --db is the database the server uses: the token made in it is known
        t = tour()
        r = httpx.post(
            f"{s.base}/v1/sync",
            json={"tours": [t], "detections": [detection(t["uuid"])]},
            headers=auth(token),
            timeout=30,
        )
        assert r.status_code == 200 and len(r.json()["accepted"]) == 2
        # one error shape, BentoML's native API included; no server path in any message
        errors = [
            httpx.post(f"{s.base}/v1/identify", content=b"not audio", timeout=30),
            httpx.post(f"{s.base}/identify", files={"audio": ("x.wav", b"RIFF" + b"\0" * 64)}, timeout=30),
            httpx.post(f"{s.base}/identify", files={"other": ("x.wav", b"RIFF")}, timeout=30),
            httpx.post(
                f"{s.base}/identify", files={"audio": ("s.ogg", audio)}, data={"threshold": "x"}, timeout=30
            ),
            httpx.get(f"{s.base}/nowhere", timeout=30),
        ]
        assert [e.status_code for e in errors] == [415, 400, 422, 422, 404]
        for e in errors:
            body = e.json()
            assert set(body) == {"error", "status"} and body["status"] == e.status_code, body
            assert "/tmp" not in body["error"] and str(tmp_path) not in body["error"]
        page = httpx.get(f"{s.base}/docs", timeout=30)
        assert page.status_code == 200 and "swagger-ui" in page.text
        doc = httpx.get(f"{s.base}/docs.json", timeout=30).json()
        assert {"/identify", "/v1/sync", "/v1/clips", "/readyz"} <= set(doc["paths"])
        assert httpx.get(f"{s.base}/static_content/swagger-ui-bundle.js", timeout=30).status_code == 200
        assert "silencio_detections_ingested" in httpx.get(f"{s.base}/metrics", timeout=10).text
        # the banner's hints work as printed
        banner = s.out.read_text()
        assert f"{s.base}/docs" in banner and f"{s.base}/readyz" in banner
        hint = next(ln for ln in banner.splitlines() if "add a device:" in ln)
        cmd = hint.split("add a device:", 1)[1].split(";", 1)[0].replace("NAME", "guide-2")
        added = subprocess.run(shlex.split(cmd), capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert added.returncode == 0 and "token" in added.stdout, added.stderr
        assert str((work / "data" / "cloud.db").resolve()) in cmd
        # client errors: one log line each, no traceback; BentoML's INFO lines only with -v
        logs = s.err.read_text() + s.out.read_text()
        assert "Traceback" not in logs and "[INFO]" not in logs
        assert "POST /v1/identify → 415" in logs

        t0 = time.monotonic()
        os.kill(s.proc.pid, signal.SIGTERM)
        rc = s.proc.wait(15)
        left = wait_gone(list(s.seen.values()), max(0.0, 15 - (time.monotonic() - t0)))
        elapsed = time.monotonic() - t0
        assert left == [] and not port_in_use(s.port), left
        assert rc == 0 and elapsed < 15
        print(f"SIGTERM → every process gone and port free in {elapsed:.1f} s")
    finally:
        s.stop()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_no_flags_birdnet_alone_and_workers_die_with_a_killed_server(tmp_path):
    s = serve(tmp_path)
    try:
        s.wait_ready()
        _before_ready_only_503(s.probes)
        ready = httpx.get(f"{s.base}/v1/ready", timeout=10).json()
        assert ready["ready"] is True and ready["model"]["birdnet_only"] is True
        assert len(ready["model"]["members"]) == 1
        procs = s.record()
        workers = [p for p in procs if p.pid != s.proc.pid]
        assert len(workers) >= 2 and all(p.parent() == s.proc.pid for p in workers)
        t0 = time.monotonic()
        os.kill(s.proc.pid, signal.SIGKILL)  # no chance to stop its workers itself
        s.proc.wait()
        left = wait_gone(workers, 15)
        assert left == [], [(p.pid, p.args[:80]) for p in left]
        assert not port_in_use(s.port)
        print(f"SIGKILL of the server → its workers gone in {time.monotonic() - t0:.1f} s")
    finally:
        s.stop()


# ---------------------------------------------------------------------------------- fatal start-up errors
def _package(root: Path, members: list[dict], name: str = "broken") -> Path:
    from shared_features import LabelSpace
    from shared_features.package import PACKAGE_FORMAT, PACKAGE_VERSION

    labels = LabelSpace.default()
    root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": PACKAGE_FORMAT,
        "package_version": PACKAGE_VERSION,
        "kind": "ensemble",
        "name": name,
        "version": "1",
        "feature_preset": "default",
        "labels": labels.to_dict(),
        "labels_sha256": labels.digest(),
        "members": members,
    }
    (root / "package.json").write_text(json.dumps(manifest))
    return root


def _onnx_member(root: Path, blob: bytes, fingerprint: str | None = None) -> dict:
    import hashlib

    from shared_features import DEFAULT

    (root / "members").mkdir(parents=True, exist_ok=True)
    (root / "members" / "cnn.onnx").write_bytes(blob)
    return {
        "name": "cnn",
        "runtime": "onnx",
        "feature_preset": "default",
        "feature_fingerprint": fingerprint or DEFAULT.fingerprint(),
        "file": "members/cnn.onnx",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "bytes": len(blob),
    }


def _case(tmp_path: Path, case: str) -> tuple[list[str], str, socket.socket | None]:
    """(flags, a word the error line must contain, a socket to hold open)."""
    if case == "missing model":
        return ["--model", "no-such-package"], "no-such-package", None
    if case == "corrupt model":
        pkg = _package(tmp_path / "pkg", [_onnx_member(tmp_path / "pkg", b"x" * 64)])
        (pkg / "members" / "cnn.onnx").write_bytes(b"y" * 64)  # altered after packaging
        return ["--model", "pkg"], "sha256", None
    if case == "unreadable package.json":
        (tmp_path / "pkg").mkdir()
        (tmp_path / "pkg" / "package.json").write_text('{"format": "silencio-model-package", trunc')
        return ["--model", "pkg"], "not valid JSON", None
    if case == "fingerprint mismatch":
        root = tmp_path / "pkg"
        _package(root, [_onnx_member(root, b"x" * 64, fingerprint="fv1-0000000000000000")])
        return ["--model", "pkg"], "fv1-0000000000000000", None
    if case == "unreadable database":
        (tmp_path / "bad.db").write_bytes(b"this is not a database " * 200)
        return ["--db", "bad.db"], "not a database", None
    if case == "missing taxonomy":
        return ["--taxonomy", "nope.csv"], "nope.csv", None
    assert case == "busy port"
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return [], "in use", holder


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "case",
    [
        "missing model",
        "corrupt model",
        "unreadable package.json",
        "fingerprint mismatch",
        "unreadable database",
        "missing taxonomy",
        "busy port",
    ],
)
def test_fatal_start_up_error_is_one_line_and_a_quick_exit(tmp_path, case):
    args, word, holder = _case(tmp_path, case)
    port = holder.getsockname()[1] if holder is not None else None
    t0 = time.monotonic()
    s = serve(tmp_path, *args, port=port)
    try:
        while s.proc.poll() is None and time.monotonic() - t0 < 30:
            s.record()
            time.sleep(0.1)
        elapsed = time.monotonic() - t0
        assert s.proc.returncode not in (None, 0), f"still running after {elapsed:.0f} s"
        err = s.err.read_text().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and word in err[0], err
        assert s.out.read_text() == ""  # no banner: nothing was started
        assert wait_gone(list(s.seen.values()), 5) == []
        print(f"{case}: exit {s.proc.returncode} after {elapsed:.1f} s: {err[0]}")
    finally:
        s.stop()
        if holder is not None:
            holder.close()


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_model_failing_in_the_worker_stops_the_server_once(tmp_path):
    """A package that verifies (manifest, sha256, fingerprint) but whose ONNX member cannot be
    built: the scorer worker fails at warm-up; the server stops — no restart loop — and says why."""
    root = tmp_path / "pkg"
    _package(root, [_onnx_member(root, b"this is not an ONNX model" * 10)])
    t0 = time.monotonic()
    s = serve(tmp_path, "--model", "pkg")
    try:
        while s.proc.poll() is None and time.monotonic() - t0 < 60:
            s.record()
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
        assert s.proc.returncode == 1, f"still running after {elapsed:.0f} s"
        errors = [ln for ln in s.err.read_text().splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "the model could not be loaded" in errors[0], s.err.read_text()
        assert "Traceback" not in s.err.read_text() + s.out.read_text()
        assert wait_gone(list(s.seen.values()), 10) == [] and not port_in_use(s.port)
        assert elapsed < 30
        print(f"model failing in the worker: exit 1 after {elapsed:.1f} s: {errors[0]}")
    finally:
        s.stop()
