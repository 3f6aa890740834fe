"""A transparent non-deep baseline: nearest class-centroid on mean mel profiles.

Each window is summarised by its mean over time (a 128-d spectral profile) and its per-band
standard deviation; a species' centroid is the mean summary of the windows of its training clips
(primary label). A window's score for a species is the cosine similarity to that centroid mapped to
[0, 1]. It is the floor every learned member must beat, and a check that the features carry signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared_features import LabelSpace
from training.etl import FeatureCache


def summarise(feats: np.ndarray) -> np.ndarray:
    """``[n, n_mels, n_frames]`` → ``[n, 2*n_mels]`` float32 (time mean and std per band)."""
    f = np.asarray(feats, np.float32)
    return np.concatenate([f.mean(axis=-1), f.std(axis=-1)], axis=-1)


@dataclass
class CentroidBaseline:
    labels: LabelSpace
    centroids: np.ndarray  # [n_species, d]; rows of species without data are NaN
    mean: np.ndarray  # [d] global mean, subtracted before cosine

    @classmethod
    def fit(cls, cache: FeatureCache, rows: list[int] | None = None) -> CentroidBaseline:
        rows = rows if rows is not None else cache.rows("train")
        labels = cache.labels
        X = summarise(np.stack([cache.features(i) for i in rows]))
        y = np.array([labels.index(cache.index[i]["primary_label"]) for i in rows])
        mean = X.mean(axis=0)
        C = np.full((len(labels), X.shape[1]), np.nan, np.float32)
        for k in np.unique(y):
            C[k] = (X[y == k] - mean).mean(axis=0)
        return cls(labels, C, mean)

    def predict(self, feats: np.ndarray) -> np.ndarray:
        """``[n, n_mels, n_frames]`` → ``[n, n_species]`` scores in [0, 1] (0.5 for unknown species)."""
        X = summarise(feats) - self.mean
        Xn = X / (np.linalg.norm(X, axis=1, keepdims=True) + 1e-9)
        C = np.nan_to_num(self.centroids)
        Cn = C / (np.linalg.norm(C, axis=1, keepdims=True) + 1e-9)
        s = (Xn @ Cn.T + 1) / 2
        s[:, np.isnan(self.centroids).any(axis=1)] = 0.5
        return s.astype(np.float32)
