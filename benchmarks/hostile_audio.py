"""Hostile audio, fuzzed: seeded random and mutated bytes fed to ``load_audio`` and to the cloud's
upload endpoints (``POST /identify``, ``/v1/identify``, ``/v1/clips``), each case under a time limit.

    .venv/bin/python benchmarks/hostile_audio.py [--load-audio 10000] [--http 3000] [--seed 0]

Cases: valid seed files (WAV 16-bit and float, FLAC, OGG Vorbis, MP3, AIFF, 1–3 s of a seeded
tone), crafted hostile files (a FLAC of silence declaring hours, a FLAC whose header does not say
its length, WAV headers lying about their length, sample rate, channels, bit depth), random bytes,
and mutations of the seeds: flipped bits, overwritten and zeroed runs, truncations, appended
garbage, spliced headers, header fields set to extremes. Everything is derived from ``--seed``:
case ``i`` is reproducible alone (``--only i``).

HTTP request ``i`` carries input ``i // 3`` to ``/identify``, ``/v1/identify`` and ``/v1/clips`` in
turn, so every endpoint sees the same inputs. Pass criteria, per case: ``load_audio`` returns audio
or raises one of the documented errors (the ``AudioError`` family of ``shared_features.errors``);
every HTTP answer is 200 or a documented 4xx (400, 413, 415, 422) in the one error shape — never a
5xx; no case runs longer than ``--case-seconds`` (a hang) and the worker process never dies (a
crash: libsndfile runs in it). The cases run in a worker process that the supervisor watches: a
crash or a hang is reported with the case that caused it. Prints one table: target × outcome, with
counts and the slowest case.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import queue
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from benchmarks._table import table  # noqa: E402

#: the answers an upload may get: audio accepted, or a documented client error
HTTP_OK = {200, 400, 413, 415, 422}
HTTP_TARGETS = ("/identify", "/v1/identify", "/v1/clips")


# ---------------------------------------------------------------------------------- case generation
def _tone(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 2500 * t) + 0.01 * rng.standard_normal(t.size)
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def _encode(x: np.ndarray, sr: int, fmt: str, subtype: str | None = None) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def wav_header(
    sr: int, channels: int, bits: int, data_size: int, riff_size: int | None = None, fmt: int = 1
) -> bytes:
    """A RIFF/WAVE header whose fields say whatever the caller wants (no checks)."""
    align = (channels * bits // 8) & 0xFFFF
    return (
        b"RIFF"
        + struct.pack("<I", (36 + data_size if riff_size is None else riff_size) & 0xFFFFFFFF)
        + b"WAVEfmt "
        + struct.pack(
            "<IHHIIHH", 16, fmt, channels & 0xFFFF, sr & 0xFFFFFFFF, (sr * align) & 0xFFFFFFFF, align, bits
        )
        + b"data"
        + struct.pack("<I", data_size & 0xFFFFFFFF)
    )


def flac_silence_declaring(seconds: float, sr: int = 8000, unknown_length: bool = False) -> bytes:
    """A small FLAC of digital silence (constant subframes: a few bytes per 4096 samples); its
    header declares its real length, or no length at all (``total_samples = 0``)."""
    import soundfile as sf

    buf = io.BytesIO()
    step = np.zeros(sr * 60, np.int16)
    with sf.SoundFile(buf, "w", sr, 1, format="FLAC") as f:
        done = 0.0
        while done < seconds:
            n = int(min(60.0, seconds - done) * sr)
            f.write(step[:n])
            done += 60.0
    data = bytearray(buf.getvalue())
    if unknown_length:  # STREAMINFO: total samples are the low 36 bits of bytes 18..26
        x = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
        data[18:26] = x.to_bytes(8, "big")
    return bytes(data)


def seeds() -> list[tuple[str, bytes]]:
    """Valid files of every container (short: a window or less), and crafted hostile ones."""
    out = [
        ("wav16", _encode(_tone(1.0, 32_000), 32_000, "WAV", "PCM_16")),
        ("wav-float-stereo", _encode(_tone(1.5, 44_100, 2), 44_100, "WAV", "FLOAT")),
        ("flac", _encode(_tone(2.0, 48_000), 48_000, "FLAC")),
        ("ogg", _encode(_tone(2.0, 32_000, seed=1), 32_000, "OGG", "VORBIS")),
        ("aiff", _encode(_tone(1.0, 22_050), 22_050, "AIFF")),
    ]
    try:
        out.append(("mp3", _encode(_tone(2.0, 32_000, seed=2), 32_000, "MP3", "MPEG_LAYER_III")))
    except Exception:  # noqa: BLE001 - a libsndfile built without MP3 writing: fewer seeds
        pass
    pcm = (_tone(1.0, 32_000)[:, 0] * 32767).astype(np.int16).tobytes()
    out += [
        ("flac-3h-silence", flac_silence_declaring(3 * 3600)),
        ("flac-unknown-length-1h", flac_silence_declaring(3600, unknown_length=True)),
        ("wav-says-4GB", wav_header(32_000, 1, 16, 0xFFFFFFF0) + pcm),
        ("wav-says-less", wav_header(32_000, 1, 16, 1000) + pcm),
        ("wav-1Hz", wav_header(1, 1, 16, len(pcm)) + pcm),
        ("wav-4GHz", wav_header(4_000_000_000, 1, 16, len(pcm)) + pcm),
        ("wav-1000ch", wav_header(32_000, 1000, 16, len(pcm)) + pcm),
        ("wav-0ch", wav_header(32_000, 0, 16, len(pcm)) + pcm),
        ("wav-7bit", wav_header(32_000, 1, 7, len(pcm)) + pcm),
    ]
    return out


def _mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> tuple[str, bytes]:
    b = bytearray(data)
    op = rng.choice(
        ["flip", "overwrite", "zero", "truncate", "append", "splice", "header-int", "dup", "delete", "random"]
    )
    n = len(b)
    if op == "random" or n == 0:
        return "random", rng.randbytes(rng.choice([0, 1, 4, 16, 64, 512, 4096]))
    if op == "flip":
        for _ in range(rng.randint(1, 32)):
            i = rng.randrange(n)
            b[i] ^= 1 << rng.randrange(8)
    elif op == "overwrite":
        i = rng.randrange(n)
        k = rng.randint(1, 64)
        b[i : i + k] = rng.randbytes(k)
    elif op == "zero":
        i = rng.randrange(n)
        k = rng.randint(1, 2048)
        b[i : i + k] = bytes(len(b[i : i + k]))
    elif op == "truncate":
        b = b[: rng.randrange(n)]
    elif op == "append":
        b += rng.randbytes(rng.randint(1, 4096))
    elif op == "splice":
        other = rng.choice(pool)
        cut = rng.randrange(min(n, 256) or 1)
        b = bytearray(other[:cut]) + b[cut:]
    elif op == "header-int":  # a size, rate or count field in the first 64 bytes set to an extreme
        i = rng.randrange(min(n, 64))
        width = rng.choice([2, 4, 8])
        value = rng.choice([0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1])
        b[i : i + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, rng.choice(["little", "big"]))
    elif op == "dup":
        i = rng.randrange(n)
        k = rng.randint(1, 4096)
        b[i:i] = b[i : i + k]
    elif op == "delete":
        i = rng.randrange(n)
        del b[i : i + rng.randint(1, 1024)]
    return op, bytes(b)


def case(seed: int, i: int, pool: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    """Case ``i`` of the run with ``seed``: (description, bytes). Reproducible alone."""
    rng = random.Random(f"{seed}:{i}")
    name, data = pool[i % len(pool)]
    if i < len(pool):
        return f"seed:{name}", data
    op, out = _mutate(rng, data, [d for _, d in pool])
    if rng.random() < 0.3:  # a second mutation now and then
        op2, out = _mutate(rng, out, [d for _, d in pool])
        op = f"{op}+{op2}"
    return f"{op}({name})", out


# ---------------------------------------------------------------------------------- the worker
def _load_audio_outcome(data: bytes) -> str:
    from shared_features import load_audio
    from shared_features.errors import AudioError

    try:
        y = load_audio(data)
    except AudioError as exc:
        return type(exc).__name__
    if y.dtype != np.float32 or y.ndim != 1 or not np.all(np.isfinite(y)):
        return "FAIL:bad-output"
    return "ok"


class _Service:
    """The BentoML service in-process (``to_asgi``), BirdNET only, a device token."""

    def __init__(self, home: Path) -> None:
        os.environ["SILENCIO_HOME"] = str(home)
        os.environ.setdefault("SILENCIO_CLOUD_DATABASE_URL", f"sqlite:///{home / 'cloud.db'}")
        from starlette.testclient import TestClient

        from bentos.service import Silencio
        from cloud.settings import CloudSettings
        from cloud.store import open_store

        store = open_store(CloudSettings())
        self.token = store.add_device(f"fuzz-{os.getpid()}")
        store.close()
        self.client = TestClient(Silencio.to_asgi(), raise_server_exceptions=False)
        self.client.__enter__()

    def post(self, target: str, data: bytes, i: int) -> tuple[int, bool]:
        """(status, error shape ok)."""
        import hashlib
        import uuid
        from datetime import UTC, datetime

        headers = {"authorization": f"Bearer {self.token}"}
        if target == "/identify":
            r = self.client.post("/identify", files={"audio": ("a.bin", data)})
        elif target == "/v1/identify":
            r = self.client.post(
                "/v1/identify", content=data, headers={"content-type": "application/octet-stream"}
            )
        else:
            meta = {
                "uuid": str(uuid.UUID(int=random.Random(i).getrandbits(128), version=4)),
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": max(len(data), 1),
                "reason": "random",
                "recorded_at": datetime.now(UTC).isoformat(),
            }
            r = self.client.post(
                "/v1/clips",
                data={"meta": json.dumps(meta)},
                files={"audio": ("c.bin", data)},
                headers=headers,
            )
        shape = True
        if r.status_code >= 400:
            try:
                body = r.json()
                shape = set(body) == {"error", "status"} and body["status"] == r.status_code
            except ValueError:
                shape = False
        return r.status_code, shape


def worker(args: argparse.Namespace) -> int:
    """Runs the cases; prints ``start <n> <target>`` before and ``end <n> <outcome> <s>`` after each."""
    pool = seeds()
    service = None
    tmp = tempfile.mkdtemp(prefix="silencio-fuzz-")
    # HTTP: input k goes to each endpoint in turn (requests 3k, 3k+1, 3k+2 carry case k)
    plan = [("load_audio", i, i) for i in range(args.load_audio)] + [
        (HTTP_TARGETS[i % len(HTTP_TARGETS)], i, i // len(HTTP_TARGETS)) for i in range(args.http)
    ]
    if args.only is not None:
        plan = [p for p in plan if p[2] == args.only]
    for target, i, k in plan:
        desc, data = case(args.seed, k, pool)
        print(f"start {i} {target} input {k}: {desc}", flush=True)
        t = time.perf_counter()
        if target == "load_audio":
            outcome = _load_audio_outcome(data)
        else:
            if service is None:
                service = _Service(Path(tmp))
            status, shape = service.post(target, data, i)
            outcome = (
                str(status) if status in HTTP_OK and shape else f"FAIL:{status}{'' if shape else '-shape'}"
            )
        print(f"end {i} {outcome} {time.perf_counter() - t:.4f}", flush=True)
    return 0


# ---------------------------------------------------------------------------------- the supervisor
@dataclass
class Report:
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    slowest: dict[str, tuple[float, int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    cases: int = 0

    def rows(self) -> list[list[object]]:
        return [
            [target, outcome, n, f"{self.slowest[target][0]:.3f} (case {self.slowest[target][1]})"]
            for (target, outcome), n in sorted(self.counts.items())
        ]


def run(
    load_audio: int, http: int, seed: int = 0, case_seconds: float = 30.0, only: int | None = None
) -> Report:
    """Run the cases in a worker process under the per-case time limit; a crash or a hang of the
    worker is a failure naming its case (the remaining cases of that worker are then not run)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--load-audio", str(load_audio)]
    cmd += ["--http", str(http), "--seed", str(seed)] + (["--only", str(only)] if only is not None else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_HERE.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str | None] = queue.Queue()
    err: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    threading.Thread(target=lambda: err.extend(proc.stderr or []), daemon=True).start()
    rep = Report()
    current: tuple[str, str] | None = None
    startup = 300.0  # the first HTTP case loads the model
    while True:
        try:
            line = lines.get(timeout=startup if current and current[0] != "load_audio" else case_seconds)
        except queue.Empty:
            proc.kill()
            rep.failures.append(f"hang: case {current} ran longer than {case_seconds:g} s")
            break
        if line is None:
            break
        parts = line.split(" ", 3)
        if parts[0] == "start":
            current = (parts[2], f"{parts[1]} {parts[3] if len(parts) > 3 else ''}")
        elif parts[0] == "end" and current is not None:
            i, outcome, secs = int(parts[1]), parts[2], float(parts[3])
            target = current[0]
            rep.counts[(target, outcome)] += 1
            rep.cases += 1
            if secs > rep.slowest.get(target, (-1.0, 0))[0]:
                rep.slowest[target] = (secs, i)
            if outcome.startswith("FAIL"):
                rep.failures.append(f"{target} case {current[1]}: {outcome}")
            if target != "load_audio":
                startup = case_seconds
            current = None
    rc = proc.wait()
    if rc != 0:
        tail = "".join(err)[-2000:]
        rep.failures.append(f"worker exited with {rc} during case {current}: {tail}")
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load-audio", type=int, default=10_000, help="cases fed to load_audio")
    ap.add_argument("--http", type=int, default=3_000, help="cases posted to the upload endpoints (in turn)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case-seconds", type=float, default=30.0, help="per-case time limit (a hang)")
    ap.add_argument(
        "--only", type=int, help="run only input N (reproduce a failure: N is in its description)"
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    t = time.perf_counter()
    rep = run(args.load_audio, args.http, args.seed, args.case_seconds, args.only)
    print(table(["target", "outcome", "cases", "slowest s (case)"], rep.rows()))
    print(
        f"{rep.cases} cases (seed {args.seed}) in {time.perf_counter() - t:.0f} s; "
        f"failures (crash, hang, undocumented error, 5xx): {len(rep.failures)}"
    )
    for f in rep.failures[:20]:
        print(f"  {f}")
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())
