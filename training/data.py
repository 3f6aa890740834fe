"""Torch datasets of 5 s windows for training: from the ETL feature cache, or straight from audio
(the log-mel is then computed on the model's device by the shared torch front end)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from shared_features import DEFAULT, FeatureConfig, LabelSpace, frame_windows, load_audio, log_mel
from training.dataset import BirdCLEFDataset, Recording, read_solution_csv, row_id
from training.errors import TrainingError
from training.etl import FeatureCache
from training.splits import SplitConfig, stratified_group_split, time_ordered_split


class WindowSet(Protocol):
    """What the loop needs of a window dataset (:class:`CachedWindows`, :class:`AudioWindows`)."""

    def __len__(self) -> int: ...
    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]: ...
    def target_matrix(self) -> np.ndarray: ...


class CachedWindows(Dataset):  # type: ignore[type-arg]
    """Items: (``[n_mels, frames] float32`` features, ``[n_species] float32`` target)."""

    def __init__(
        self, cache: FeatureCache, rows: list[int], labels: LabelSpace, secondary_weight: float = 0.5
    ) -> None:
        self.cache, self.rows, self.labels = cache, rows, labels
        self.targets = (
            np.stack(
                [
                    labels.encode(
                        cache.index[i]["primary_label"],
                        [c for c in cache.index[i]["secondary_labels"].split() if c],
                        secondary_weight,
                    )
                    for i in rows
                ]
            )
            if rows
            else np.zeros((0, len(labels)), np.float32)
        )

    def __len__(self) -> int:
        return len(self.rows)

    def target_matrix(self) -> np.ndarray:
        return self.targets

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.cache.features(self.rows[k])), torch.from_numpy(self.targets[k])


class AudioWindows(Dataset):  # type: ignore[type-arg]
    """Items: (``[window_samples] float32`` waveform, target). Decodes lazily; decoded recordings
    stay in an LRU cache of at most ``cache_bytes`` (default 2 GB), so small datasets are decoded
    once and large ones stream."""

    def __init__(
        self,
        ds: BirdCLEFDataset,
        recordings: list[Recording],
        cfg: FeatureConfig,
        secondary_weight: float = 0.5,
        cache_bytes: int = 2 << 30,
        int16: bool = False,
        min_snr_db: float | None = None,
    ) -> None:
        from shared_features import audio_info, count_windows
        from shared_features.windows import window_activity

        self.ds, self.cfg = ds, cfg
        self.int16 = int16  # keep and return 16-bit PCM: half the memory and host→GPU traffic
        self.items: list[tuple[Recording, int]] = []
        for r in recordings:
            if min_snr_db is None:
                n = round(audio_info(ds.audio_path(r)).duration * cfg.sample_rate)
                self.items += [(r, w) for w in range(count_windows(n, cfg))]
            else:  # the feature cache's rule (etl.py): the window's SNR rounded to 0.01 dB
                wins, _ = frame_windows(load_audio(ds.audio_path(r), cfg), cfg)
                self.items += [
                    (r, w) for w, x in enumerate(wins) if round(window_activity(x)[1], 2) >= min_snr_db
                ]
        self.targets = {
            r.filename: ds.labels.encode(r.primary_label, r.secondary_labels, secondary_weight)
            for r in recordings
        }
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cap = cache_bytes
        self._bytes = 0

    def __len__(self) -> int:
        return len(self.items)

    def target_matrix(self) -> np.ndarray:
        n = len(self.ds.labels)
        return np.stack([self.targets[r.filename] for r, _ in self.items]) if self.items else np.zeros((0, n))

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rec, w = self.items[k]
        if rec.filename not in self._lru:
            wins, _ = frame_windows(load_audio(self.ds.audio_path(rec), self.cfg), self.cfg)
            if self.int16:
                wins = np.round(np.clip(wins, -1.0, 32767 / 32768) * 32768).astype(np.int16)
            self._lru[rec.filename] = wins
            self._bytes += wins.nbytes
            while self._bytes > self._cap and len(self._lru) > 1:
                self._bytes -= self._lru.popitem(last=False)[1].nbytes
        else:
            self._lru.move_to_end(rec.filename)
        wins = self._lru[rec.filename]
        return torch.from_numpy(wins[min(w, len(wins) - 1)]), torch.from_numpy(self.targets[rec.filename])


@dataclass(frozen=True)
class ExtraClip:
    """One clip added to a training set (e.g. a judged feedback clip): every 5 s window of it is
    a training example of ``label`` — a species code, or ``None`` for "not an animal" (an
    all-zero target: a negative for every species)."""

    path: Path
    label: str | None


@dataclass(frozen=True)
class ExtraClips:
    """Clips added to the training windows of a member or a head (the closed loop's feedback
    clips); ``weight`` repeats each clip's windows that many times (≥ 1) so a few judged clips are
    not drowned by the dataset."""

    name: str
    clips: tuple[ExtraClip, ...]
    weight: int = 1

    def __post_init__(self) -> None:
        if self.weight < 1:
            raise TrainingError(f"extra clips' weight must be ≥ 1, got {self.weight}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (absolute paths: Ray workers read the same files) with each file's sha256."""
        return {
            "name": self.name,
            "weight": self.weight,
            "clips": [
                {
                    "path": str(Path(c.path).resolve()),
                    "label": c.label,
                    "sha256": hashlib.sha256(Path(c.path).read_bytes()).hexdigest(),
                }
                for c in self.clips
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExtraClips:
        clips = tuple(ExtraClip(Path(c["path"]), c.get("label")) for c in d["clips"])
        return cls(str(d["name"]), clips, int(d.get("weight", 1)))


class ClipWindows(Dataset):  # type: ignore[type-arg]
    """The windows of :class:`ExtraClips`: items like the base set's — log-mel features
    (``[n_mels, frames] float32``, a feature cache's kind) or waveforms (``[window_samples]
    float32``, training from audio) — with one-hot (or all-zero) targets."""

    def __init__(self, extra: ExtraClips, labels: LabelSpace, cfg: FeatureConfig, *, features: bool) -> None:
        wins: list[np.ndarray] = []
        targets: list[np.ndarray] = []
        for c in extra.clips:
            if c.label is not None and c.label not in labels:
                raise TrainingError(f"{c.path}: species {c.label!r} is not in the label space")
            w, _ = frame_windows(load_audio(c.path, cfg), cfg)
            w = np.asarray(w, np.float32)
            if features:
                w = np.concatenate([log_mel(w[i : i + 32], cfg) for i in range(0, len(w), 32)])
            y = labels.encode(c.label, [], 0.0) if c.label is not None else np.zeros(len(labels), np.float32)
            for _ in range(extra.weight):
                wins.extend(w)
                targets.extend([np.asarray(y, np.float32)] * len(w))
        self.windows = wins
        self.targets = np.stack(targets) if targets else np.zeros((0, len(labels)), np.float32)

    def __len__(self) -> int:
        return len(self.windows)

    def target_matrix(self) -> np.ndarray:
        return self.targets

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.windows[k]), torch.from_numpy(self.targets[k])


class WithExtra(Dataset):  # type: ignore[type-arg]
    """A training set followed by extra clip windows (a :class:`WindowSet`)."""

    def __init__(self, base: Any, extra: ClipWindows) -> None:
        self.base, self.extra = base, extra

    def __len__(self) -> int:
        return len(self.base) + len(self.extra)

    def target_matrix(self) -> np.ndarray:
        return np.concatenate([np.asarray(self.base.target_matrix(), np.float32), self.extra.target_matrix()])

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.base)
        if k < n:
            x, y = self.base[k]
            return x, y
        return self.extra[k - n]


def with_extra(data: TrainData, extra: ExtraClips | None) -> TrainData:
    """``data`` with ``extra``'s windows appended to its *training* part (validation and the
    held-out soundscapes stay as they are)."""
    if extra is None or not extra.clips:
        return data
    features = isinstance(data.train, CachedWindows) or (len(data.train) > 0 and data.train[0][0].ndim == 2)
    cw = ClipWindows(extra, data.labels, data.feature_cfg, features=features)
    if getattr(data.train, "int16", False):  # the base set's 16-bit PCM windows: the same here
        cw.windows = [np.round(np.clip(w, -1.0, 32767 / 32768) * 32768).astype(np.int16) for w in cw.windows]
    return replace(
        data,
        train=WithExtra(data.train, cw),
        description=f"{data.description} + {len(cw)} windows of {len(extra.clips)} extra clips "
        f"({extra.name}, weight {extra.weight})",
    )


@dataclass
class SoundscapeSet:
    """Held-out labelled soundscape windows (synthetic truth): never used for training or early
    stopping, only for the final report."""

    row_ids: list[str]
    features: np.ndarray  # [n, n_mels, frames] float32
    truth_csv: Path


@dataclass
class TrainData:
    train: Dataset  # type: ignore[type-arg]
    val: Dataset  # type: ignore[type-arg]
    labels: LabelSpace
    feature_cfg: FeatureConfig
    dataset_fingerprint: str
    description: str
    soundscapes: SoundscapeSet | None = None


SUBSETS = ("all", "initial", "new")


@dataclass(frozen=True)
class DataSource:
    """Where training windows come from: a feature cache (``silencio data prepare``) *or* a dataset
    directory in the BirdCLEF layout (decoded on the fly, log-mel on the training device), and
    which part of the time-ordered split (``all``, ``initial``, ``new``). With ``int16`` the audio
    windows travel as 16-bit PCM (half the host→device traffic; audio only)."""

    cache: Path | None = None
    data_dir: Path | None = None
    subset: str = "all"
    int16: bool = False

    def __post_init__(self) -> None:
        if (self.cache is None) == (self.data_dir is None):
            raise TrainingError("give exactly one of a feature cache or a dataset directory")
        if self.subset not in SUBSETS:
            raise TrainingError(f"subset must be one of {SUBSETS}, got {self.subset!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with absolute paths (a Ray worker or a scheduler reads the same files)."""
        return {
            "cache": str(Path(self.cache).resolve()) if self.cache is not None else None,
            "data_dir": str(Path(self.data_dir).resolve()) if self.data_dir is not None else None,
            "subset": self.subset,
            "int16": self.int16,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSource:
        return cls(
            cache=Path(d["cache"]) if d.get("cache") else None,
            data_dir=Path(d["data_dir"]) if d.get("data_dir") else None,
            subset=str(d.get("subset", "all")),
            int16=bool(d.get("int16", False)),
        )


def select_data(
    source: DataSource,
    feature_cfg: FeatureConfig,
    *,
    seed: int = 0,
    secondary_weight: float = 0.5,
    min_snr_db: float | None = None,
    soundscapes: bool = True,
) -> TrainData:
    """The one data selection of every training run, local or on Ray: the grouped, stratified
    split of ``seed`` (within ``source.subset``), training targets with secondary labels at
    ``secondary_weight``, training windows below ``min_snr_db`` dropped (validation keeps every
    window and scores primary labels only), and — with ``soundscapes`` and truth — the held-out
    labelled soundscape windows for the final report. Callers pass the fields of their
    :class:`~training.loop.TrainConfig`, so two runs of one config select identical windows."""
    if source.cache is not None:
        if source.int16:
            raise TrainingError("int16 applies to training from audio, not from a feature cache")
        return from_cache(
            source.cache,
            seed=seed,
            subset=source.subset,
            secondary_weight=secondary_weight,
            min_snr_db=min_snr_db,
            feature_cfg=feature_cfg,
            soundscapes=soundscapes,
        )
    assert source.data_dir is not None
    return from_audio(
        source.data_dir,
        feature_cfg,
        seed=seed,
        subset=source.subset,
        secondary_weight=secondary_weight,
        min_snr_db=min_snr_db,
        soundscapes=soundscapes,
        int16=source.int16,
    )


def recording_splits(ds: BirdCLEFDataset, seed: int = 0, subset: str = "all") -> dict[str, str]:
    """filename → "train" / "val" / "test" (grouped, stratified); with ``subset`` "initial" or "new"
    only that part of the time-ordered split is kept."""
    recs = ds.recordings
    if subset != "all":
        if subset not in ("initial", "new"):
            raise TrainingError(f"subset must be all, initial or new, got {subset!r}")
        t = time_ordered_split(recs)
        recs = [r for r, s in zip(recs, t) if s == subset]
    split = stratified_group_split(recs, SplitConfig(seed=seed))
    return {r.filename: s for r, s in zip(recs, split)}


def _in_truth_order(
    truth_csv: Path, labels: LabelSpace, found: dict[str, int], where: str
) -> tuple[list[str], list[int]]:
    """The truth file's row ids and their positions in ``found`` (row_id → position)."""
    ids, _, _ = read_solution_csv(truth_csv, labels)
    missing = [r for r in ids if r not in found]
    if missing:
        raise TrainingError(f"{truth_csv}: {len(missing)} truth rows not in {where} (e.g. {missing[0]})")
    return ids, [found[r] for r in ids]


def load_soundscapes(cache: FeatureCache, truth_csv: Path) -> SoundscapeSet:
    """The labelled soundscape windows of a cache, in the truth file's row order."""
    found = {
        row_id(cache.index[i]["recording"], round(float(cache.index[i]["end"]))): i
        for i in cache.rows("soundscape")
    }
    ids, order = _in_truth_order(truth_csv, cache.labels, found, "the cache")
    return SoundscapeSet(ids, np.stack([cache.features(i) for i in order]), truth_csv)


def soundscape_waveforms(
    ds: BirdCLEFDataset, truth_csv: Path, cfg: FeatureConfig = DEFAULT
) -> tuple[list[str], np.ndarray]:
    """Decoded ``[n, window_samples]`` soundscape windows of a dataset, in the truth file's order."""
    ids: list[str] = []
    wins: list[np.ndarray] = []
    wanted, _, _ = read_solution_csv(truth_csv, ds.labels)
    stems = {r.rsplit("_", 1)[0] for r in wanted}
    for p in ds.soundscapes():
        if p.stem not in stems:  # unlabelled soundscapes (pseudo-labelling material)
            continue
        w, times = frame_windows(load_audio(p, cfg), cfg)
        ids += [row_id(p, t.end_second) for t in times]
        wins.append(w)
    want, order = _in_truth_order(truth_csv, ds.labels, {r: i for i, r in enumerate(ids)}, "the soundscapes")
    return want, np.concatenate(wins)[order]


def from_cache(
    cache_dir: Path,
    *,
    seed: int = 0,
    subset: str = "all",
    secondary_weight: float = 0.5,
    min_snr_db: float | None = None,
    feature_cfg: FeatureConfig | None = None,
    soundscapes: bool = True,
) -> TrainData:
    """Training windows of a feature cache (prefer :func:`select_data`)."""
    cache = FeatureCache(cache_dir, feature_cfg)
    ds = BirdCLEFDataset.load(cache.manifest["dataset"])
    split = recording_splits(ds, seed, subset)
    rows: dict[str, list[int]] = {"train": [], "val": []}
    for i, r in enumerate(cache.index):
        if r["source"] != "train" or r["recording"] not in split:
            continue
        s = split[r["recording"]]
        if s == "train" and min_snr_db is not None and float(r["snr_db"]) < min_snr_db:
            continue
        if s in rows:
            rows[s].append(i)
    truth = Path(cache.manifest["dataset"]) / "soundscape_solution.csv"
    scapes = (
        load_soundscapes(cache, truth)
        if soundscapes and truth.exists() and cache.rows("soundscape")
        else None
    )
    return TrainData(
        CachedWindows(cache, rows["train"], cache.labels, secondary_weight),
        CachedWindows(cache, rows["val"], cache.labels, 0.0),
        cache.labels,
        cache.cfg,
        cache.manifest["dataset_fingerprint"],
        f"cache {cache_dir} ({subset}: {len(rows['train'])} train / {len(rows['val'])} val windows)",
        scapes,
    )


def from_audio(
    root: Path,
    feature_cfg: FeatureConfig,
    *,
    seed: int = 0,
    subset: str = "all",
    secondary_weight: float = 0.5,
    min_snr_db: float | None = None,
    soundscapes: bool = True,
    int16: bool = False,
) -> TrainData:
    """Training windows straight from audio (prefer :func:`select_data`); with ``soundscapes``
    (and truth), the held-out labelled soundscape windows as features for the final report."""
    ds = BirdCLEFDataset.load(root)
    split = recording_splits(ds, seed, subset)
    recs = {s: [r for r in ds.recordings if split.get(r.filename) == s] for s in ("train", "val")}
    tr = AudioWindows(ds, recs["train"], feature_cfg, secondary_weight, int16=int16, min_snr_db=min_snr_db)
    va = AudioWindows(ds, recs["val"], feature_cfg, 0.0)
    scapes = None
    truth = Path(root) / "soundscape_solution.csv"
    if soundscapes and truth.exists():
        ids, waves = soundscape_waveforms(ds, truth, feature_cfg)
        feats = np.concatenate([log_mel(waves[i : i + 32], feature_cfg) for i in range(0, len(waves), 32)])
        scapes = SoundscapeSet(ids, feats, truth)
    from training.etl import dataset_fingerprint

    return TrainData(
        tr,
        va,
        ds.labels,
        feature_cfg,
        dataset_fingerprint(ds, ds.soundscapes(), feature_cfg),
        f"audio {root} ({subset}: {len(tr)} train / {len(va)} val windows)",
        scapes,
    )
