"""``silencio data prepare``: audio → 5 s windows → log-mel → an on-disk feature cache.

Cache layout (``CACHE_VERSION`` 1)::

    CACHE/manifest.json           FeatureConfig + fingerprint, LabelSpace, dataset fingerprint,
                                  counts, bad files; written last
    CACHE/shards/<name>.f16       raw float16 features of one recording, C order,
                                  [n_windows, n_mels, n_frames]
    CACHE/shards/<name>.json      its windows (start, end, valid, rms_dbfs, snr_db) — written
                                  after the .f16, atomically: its presence marks the file done
    CACHE/index.csv               one row per window: source, recording, shard, window, start,
                                  end, valid, primary_label, secondary_labels, rms_dbfs, snr_db

Features are stored as float16 (they are standardised, ~N(0, 1): float16 keeps ~3 decimal
digits, and halves the 30 GB a full BirdCLEF cache would take in float32).

Resumable: a second run skips every recording whose shard JSON exists. A cache made with another
FeatureConfig fingerprint is refused (``CacheError``) unless ``overwrite=True``. Every audio file is
streamed in chunks, so hour-long soundscapes are processed in bounded memory. Bad files are
reported and skipped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared_features import DEFAULT, FeatureConfig, LabelSpace, iter_audio_chunks, log_mel
from shared_features.errors import AudioError
from shared_features.windows import iter_windows, window_activity
from training.dataset import BirdCLEFDataset
from training.errors import CacheError

log = logging.getLogger(__name__)
CACHE_VERSION = 1
_BATCH = 4


def _shard_name(source: str, rel: str) -> str:
    safe = rel.replace("/", "__").replace("\\", "__")
    return f"{source}__{safe}"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Job:
    source: str  # "train" or "soundscape"
    rel: str  # path relative to train_audio/ or train_soundscapes/
    path: str
    shard_dir: str
    cfg_json: str


def process_file(job: Job) -> tuple[str, str, int, str]:
    """Decode, window and featurise one file into its shard. Returns (source, rel, n, error)."""
    cfg = FeatureConfig.from_json(job.cfg_json)
    name = _shard_name(job.source, job.rel)
    bin_path = Path(job.shard_dir) / f"{name}.f16"
    meta_path = Path(job.shard_dir) / f"{name}.json"
    windows: list[dict[str, float]] = []
    try:
        with open(bin_path, "wb") as fh:
            batch: list[np.ndarray] = []

            def flush() -> None:
                if batch:
                    fh.write(log_mel(np.stack(batch), cfg).astype(np.float16).tobytes())
                    batch.clear()

            for w, samples in iter_windows(iter_audio_chunks(job.path, cfg, chunk_seconds=30.0), cfg):
                rms, snr = window_activity(samples)
                windows.append(
                    {
                        "start": w.start,
                        "end": w.end,
                        "valid": round(w.valid, 4),
                        "rms_dbfs": round(rms, 2),
                        "snr_db": round(snr, 2),
                    }
                )
                batch.append(samples)
                if len(batch) >= _BATCH:
                    flush()
            flush()
        if not windows:
            raise CacheError("no windows (empty audio)")
    except (AudioError, CacheError, FileNotFoundError) as exc:
        bin_path.unlink(missing_ok=True)
        return job.source, job.rel, 0, f"{type(exc).__name__}: {exc}"
    meta = {
        "source": job.source,
        "recording": job.rel,
        "shape": [len(windows), cfg.n_mels, cfg.n_frames],
        "dtype": "float16",
        "windows": windows,
    }
    _atomic_write(meta_path, json.dumps(meta))
    return job.source, job.rel, len(windows), ""


def _one_thread() -> None:
    """Worker processes use one BLAS/FFT thread each: N workers on N cores, no oversubscription."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn (train extra)
        pass


def dataset_fingerprint(ds: BirdCLEFDataset, soundscapes: list[Path], cfg: FeatureConfig) -> str:
    """sha256 of taxonomy.csv and train.csv contents, every input file's relative path and size,
    and the FeatureConfig fingerprint (content hashes of 12 GB of audio would cost minutes)."""
    h = hashlib.sha256()
    for meta in ("taxonomy.csv", "train.csv"):
        h.update((ds.root / meta).read_bytes())
    for r in ds.recordings:
        p = ds.audio_path(r)
        h.update(f"{r.filename}:{p.stat().st_size if p.exists() else -1}".encode())
    for p in soundscapes:
        h.update(f"soundscape/{p.name}:{p.stat().st_size}".encode())
    h.update(cfg.fingerprint().encode())
    return h.hexdigest()[:32]


def prepare_cache(
    root: Path,
    out: Path,
    cfg: FeatureConfig = DEFAULT,
    *,
    workers: int = 1,
    soundscapes: bool = True,
    limit: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    ds = BirdCLEFDataset.load(root)
    out = Path(out)
    manifest_path = out / "manifest.json"
    shard_dir = out / "shards"
    if out.exists() and any(out.iterdir()):
        old = _read_json(manifest_path) or _read_json(out / "cache_config.json")
        if old is None:
            if not overwrite:
                raise CacheError(
                    f"{out} is not empty and holds no feature cache; pass --overwrite or choose another --out"
                )
        elif old.get("fingerprint") != cfg.fingerprint():
            if not overwrite:
                raise CacheError(
                    f"{out} was built with features {old.get('fingerprint')}, not "
                    f"{cfg.fingerprint()}; pass --overwrite to rebuild it"
                )
            shutil.rmtree(out)
    shard_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(
        out / "cache_config.json",
        json.dumps({"fingerprint": cfg.fingerprint(), "feature_config": cfg.to_dict()}),
    )
    recs = ds.recordings[:limit] if limit else ds.recordings
    seen: set[str] = set()
    jobs: list[Job] = []
    for r in recs:
        if r.filename in seen:
            continue
        seen.add(r.filename)
        jobs.append(Job("train", r.filename, str(ds.audio_path(r)), str(shard_dir), cfg.to_json()))
    scapes = ds.soundscapes() if soundscapes else []
    for p in scapes:
        jobs.append(Job("soundscape", p.name, str(p), str(shard_dir), cfg.to_json()))
    todo = [j for j in jobs if not (shard_dir / f"{_shard_name(j.source, j.rel)}.json").exists()]
    skipped = len(jobs) - len(todo)
    if skipped:
        log.info("resuming: %d of %d files already in the cache", skipped, len(jobs))
    bad: dict[str, str] = {}
    done = skipped
    if progress:
        progress(done, len(jobs))
    results: Iterator[tuple[str, str, int, str]]
    if workers > 1 and len(todo) > 1:
        ex = ProcessPoolExecutor(workers, initializer=_one_thread)
        futs = [ex.submit(process_file, j) for j in todo]
        results = (f.result() for f in as_completed(futs))
    else:
        ex = None
        results = (process_file(j) for j in todo)
    try:
        for source, rel, _n, err in results:
            done += 1
            if err:
                bad[f"{source}/{rel}"] = err
                log.warning("skipped %s/%s: %s", source, rel, err)
            if progress:
                progress(done, len(jobs))
    finally:
        if ex is not None:
            ex.shutdown(cancel_futures=True)
    # earlier runs' failures are retried above (no JSON was written for them)
    index_rows = _write_index(out, ds, recs, scapes)
    manifest = {
        "cache_version": CACHE_VERSION,
        "fingerprint": cfg.fingerprint(),
        "feature_config": cfg.to_dict(),
        "labels": ds.labels.to_dict(),
        "dataset": str(ds.root),
        "dataset_fingerprint": dataset_fingerprint(ds, scapes, cfg),
        "dtype": "float16",
        "n_files": len(jobs) - len(bad),
        "n_windows": index_rows,
        "n_bad_files": len(bad),
        "bad_files": bad,
        "resumed_files": skipped,
    }
    _atomic_write(manifest_path, json.dumps(manifest, indent=2))
    return manifest


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_index(out: Path, ds: BirdCLEFDataset, recs: list[Any], scapes: list[Path]) -> int:
    labels_of = {r.filename: r for r in recs}
    rows = 0
    tmp = out / "index.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "source",
                "recording",
                "shard",
                "window",
                "start",
                "end",
                "valid",
                "primary_label",
                "secondary_labels",
                "rms_dbfs",
                "snr_db",
            ]
        )
        items = [("train", fn) for fn in labels_of] + [("soundscape", p.name) for p in scapes]
        for source, rel in items:
            name = _shard_name(source, rel)
            meta = _read_json(out / "shards" / f"{name}.json")
            if meta is None:
                continue
            r = labels_of.get(rel) if source == "train" else None
            for i, win in enumerate(meta["windows"]):
                w.writerow(
                    [
                        source,
                        rel,
                        name,
                        i,
                        win["start"],
                        win["end"],
                        win["valid"],
                        r.primary_label if r else "",
                        " ".join(r.secondary_labels) if r else "",
                        win["rms_dbfs"],
                        win["snr_db"],
                    ]
                )
                rows += 1
    os.replace(tmp, out / "index.csv")
    return rows


class FeatureCache:
    """Read side of a cache. Refuses a cache whose fingerprint is not ``cfg``'s."""

    def __init__(self, path: Path, cfg: FeatureConfig | None = None) -> None:
        self.path = Path(path)
        manifest = _read_json(self.path / "manifest.json")
        if manifest is None:
            raise CacheError(f"{self.path}: no manifest.json; run `silencio data prepare` first")
        self.manifest = manifest
        self.cfg = FeatureConfig.from_dict(manifest["feature_config"])
        if cfg is not None and cfg.fingerprint() != self.cfg.fingerprint():
            raise CacheError(
                f"{self.path}: cache features {self.cfg.fingerprint()} differ from "
                f"the requested {cfg.fingerprint()}"
            )
        self.labels = LabelSpace.from_dict(manifest["labels"])
        with open(self.path / "index.csv", newline="") as fh:
            self.index: list[dict[str, str]] = list(csv.DictReader(fh))
        self._maps: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.index)

    def shard(self, name: str) -> np.ndarray:
        if name not in self._maps:
            meta = _read_json(self.path / "shards" / f"{name}.json")
            if meta is None:
                raise CacheError(f"{self.path}: shard {name} has no metadata")
            self._maps[name] = np.memmap(
                self.path / "shards" / f"{name}.f16", dtype=np.float16, mode="r", shape=tuple(meta["shape"])
            )
        return self._maps[name]

    def features(self, i: int) -> np.ndarray:
        """``[n_mels, n_frames] float32`` features of index row ``i``."""
        row = self.index[i]
        return np.asarray(self.shard(row["shard"])[int(row["window"])], dtype=np.float32)

    def rows(self, source: str) -> list[int]:
        return [i for i, r in enumerate(self.index) if r["source"] == source]
