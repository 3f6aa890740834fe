"""Google Perch as a pretrained embedding member, from model files the user already has (nothing is
downloaded). Perch's bird-vocalization classifier takes 5 s at 32 kHz — our windows as they are —
and returns an embedding and per-class logits; its classes are eBird codes, the same codes as the
BirdCLEF ``primary_label``, so zero-shot scores map by code.

Supported form: a TFLite export (``.tflite``) with input ``[batch, 160000] float32`` and two
outputs, the embedding ``[batch, D]`` and the logits ``[batch, K]`` (told apart by the label file's
length ``K``), plus a text file of the ``K`` class codes, one per line. The interface is that of
:class:`shared_features.birdnet.BirdNET` (``predict_windows`` → probabilities over our label space,
embeddings, ``known``), so the embedding head trains on either (``silencio train birdnet-head
--embedder perch``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared_features.birdnet import BirdNETOutput, interpreter_class
from shared_features.config import DEFAULT, FeatureConfig
from shared_features.errors import SilencioFeatureError
from shared_features.labels import LabelSpace


class PerchError(SilencioFeatureError):
    """Perch model files that are missing or do not have the expected shape."""


class Perch:
    name = "perch"

    def __init__(
        self, model: Path | str, class_list: Path | str, labels: LabelSpace, num_threads: int = 1
    ) -> None:
        model, class_list = Path(model), Path(class_list)
        for p in (model, class_list):
            if not p.is_file():
                raise PerchError(f"{p}: Perch file not found (Perch is not downloaded; pass your own files)")
        self.classes = [c.strip() for c in class_list.read_text(encoding="utf-8").splitlines() if c.strip()]
        self._interp = interpreter_class()(model_path=str(model), num_threads=num_threads)
        self._in = self._interp.get_input_details()[0]
        outs = self._interp.get_output_details()
        k = len(self.classes)
        logit = [o for o in outs if int(o["shape"][-1]) == k]
        emb = [o for o in outs if int(o["shape"][-1]) != k]
        if len(outs) < 2 or not logit or not emb:
            shapes = [tuple(int(v) for v in o["shape"]) for o in outs]
            raise PerchError(f"{model}: expected an embedding and {k} logits among the outputs, got {shapes}")
        self._logits, self._emb = logit[0]["index"], emb[0]["index"]
        self.dim = int(emb[0]["shape"][-1])
        self._samples = int(self._in["shape"][-1])
        self._batch = int(self._in["shape"][0])
        self.labels = labels
        by_code = {c: i for i, c in enumerate(self.classes)}
        self.index = np.array([by_code.get(code, -1) for code in labels.codes], dtype=np.int64)
        self.known = self.index >= 0
        self._interp.allocate_tensors()

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._batch != x.shape[0]:
            self._interp.resize_tensor_input(self._in["index"], [x.shape[0], self._samples])
            self._interp.allocate_tensors()
            self._batch = x.shape[0]
        self._interp.set_tensor(self._in["index"], np.ascontiguousarray(x, np.float32))
        self._interp.invoke()
        return np.array(self._interp.get_tensor(self._logits)), np.array(self._interp.get_tensor(self._emb))

    def predict_windows(
        self, windows: np.ndarray, cfg: FeatureConfig = DEFAULT, batch: int = 8
    ) -> BirdNETOutput:
        """``[n, window_samples]`` at ``cfg.sample_rate`` (must be Perch's 5 s at 32 kHz)."""
        windows = np.atleast_2d(np.asarray(windows, np.float32))
        if cfg.sample_rate != 32_000 or windows.shape[1] != self._samples:
            raise PerchError(
                f"Perch takes {self._samples} samples at 32 kHz, got {windows.shape[1]} at {cfg.sample_rate}"
            )
        probs = np.zeros((len(windows), len(self.labels)), np.float32)
        embs = np.zeros((len(windows), self.dim), np.float32)
        for i in range(0, len(windows), batch):
            chunk = windows[i : i + batch]
            rows = []
            for j in range(len(chunk)):  # batch-1 exports are common; one window at a time is safe
                rows.append(self._run(chunk[j : j + 1]))
            logits = np.concatenate([r[0] for r in rows])
            embs[i : i + len(chunk)] = np.concatenate([r[1] for r in rows])
            p = 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))
            probs[i : i + len(chunk)][:, self.known] = p[:, self.index[self.known]]
        return BirdNETOutput(probs, embs, self.known.copy())
