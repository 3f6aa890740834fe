"""Which audio the device keeps for the cloud, under a per-tour and a total byte budget.

About ``random_rate`` of the windows at random; *uncertain* windows (the top score within
``margin`` of its threshold, or two or more species between 0.3 and 0.7); and everything the guide
flags. Clips are stored compressed (OGG Vorbis, or FLAC) under ``clips/<tour>/``. When a clip does
not fit, already-synced clips are evicted oldest first; unsynced clips (and detections) are never
deleted — if nothing can be evicted, the new clip is skipped and counted.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from edge.store import EdgeStore
from shared_features.sqlite import now

log = logging.getLogger(__name__)


@dataclass
class SamplerStats:
    random: int = 0
    uncertain: int = 0
    flagged: int = 0
    skipped_budget: int = 0
    evicted: int = 0
    bytes_written: int = 0


@dataclass
class Sampler:
    store: EdgeStore
    clip_dir: Path
    random_rate: float = 0.05
    margin: float = 0.1
    tour_budget: int = 50_000_000
    total_budget: int = 500_000_000
    fmt: str = "OGG"
    seed: int | None = None
    stats: SamplerStats = field(default_factory=SamplerStats)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        if self.fmt.upper() not in ("OGG", "FLAC"):
            raise ValueError(f"clip format must be OGG or FLAC, got {self.fmt}")

    def reason(self, probs: np.ndarray, thr: np.ndarray) -> str | None:
        top = int(np.argmax(probs))
        t = float(thr[top])
        if abs(float(probs[top]) - t) <= self.margin * min(1.0, t / 0.5):  # margin scales with low thresholds
            return "uncertain"
        if int(((probs >= 0.3) & (probs <= 0.7)).sum()) >= 2:
            return "uncertain"
        if self.rng.random() < self.random_rate:
            return "random"
        return None

    def encode(self, samples: np.ndarray, sr: int) -> bytes:
        buf = io.BytesIO()
        x = np.clip(np.asarray(samples, np.float32), -1.0, 1.0)
        if self.fmt.upper() == "OGG":
            sf.write(buf, x, sr, format="OGG", subtype="VORBIS")
        else:
            sf.write(buf, x, sr, format="FLAC", subtype="PCM_16")
        return buf.getvalue()

    def _make_room(self, size: int, tour_uuid: str | None, flagged: bool) -> bool:
        def fits() -> bool:
            total_ok = self.store.clip_bytes() + size <= self.total_budget
            tour_ok = (
                flagged or tour_uuid is None or self.store.clip_bytes(tour_uuid) + size <= self.tour_budget
            )
            return total_ok and tour_ok

        if fits():
            return True
        for c in self.store.evictable_clips():
            if tour_uuid is not None and not flagged and self.store.clip_bytes() + size <= self.total_budget:
                # only the tour budget is exceeded: evict this tour's synced clips first
                if c["tour_uuid"] != tour_uuid:
                    continue
            try:
                Path(c["path"]).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not delete %s: %s", c["path"], exc)
                continue
            self.store.mark_evicted(c["uuid"])
            self.stats.evicted += 1
            if fits():
                return True
        return fits()

    def save(
        self,
        samples: np.ndarray,
        sr: int,
        reason: str,
        *,
        tour_uuid: str | None,
        detection_uuid: str | None = None,
        start_offset: float = 0.0,
    ) -> str | None:
        """Encode and store one clip; returns its UUID, or None when the budget has no room."""
        data = self.encode(samples, sr)
        if not self._make_room(len(data), tour_uuid, reason == "flagged"):
            self.stats.skipped_budget += 1
            log.info("clip budget full: %s clip skipped (%d bytes)", reason, len(data))
            return None
        digest = hashlib.sha256(data).hexdigest()
        ext = "ogg" if self.fmt.upper() == "OGG" else "flac"
        path = self.clip_dir / (tour_uuid or "no-tour") / f"{digest}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            import os

            os.fsync(fh.fileno())
        tmp.replace(path)
        u = self.store.add_clip(
            {
                "tour_uuid": tour_uuid,
                "detection_uuid": detection_uuid,
                "path": str(path),
                "sha256": digest,
                "bytes": len(data),
                "reason": reason,
                "start_offset": start_offset,
                "recorded_at": now(),
            }
        )
        setattr(self.stats, reason, getattr(self.stats, reason) + 1)
        self.stats.bytes_written += len(data)
        return u
