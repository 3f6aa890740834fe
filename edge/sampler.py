"""Which audio the device keeps for the cloud, under a per-tour and a total byte budget, a free-space
watermark, and the speech gate.

About ``random_rate`` of the windows at random, and ``detection_rate`` of the windows where a
detection event starts (a stratified random sample: the cloud confirms detections only through
their clips); *uncertain* windows (the top score within
``margin`` of its threshold, or two or more species between 0.3 and 0.7); and everything the guide
flags. Before a clip is written:

1. the speech gate listens: a window with human speech keeps its detection but not its audio
   (counted as ``speech_suppressed``) — speech never leaves the device and is never stored;
2. free space: below the watermark (``min_free_bytes``) audio *pauses* — no clip is written, the
   pause is recorded in the store (status, TUI, ``DeviceStatus.audio_paused``) — while detections
   keep committing; it resumes by itself once there is room again;
3. the budgets: when a clip does not fit, already-synced clips are evicted oldest first; unsynced
   clips (and detections) are never deleted — if nothing can be evicted, the clip is skipped.

A full disk while writing the clip (``ENOSPC``) or its row (:class:`StorageFullError`) pauses audio
the same way; the partial file is removed. Clips are stored compressed (OGG Vorbis, or FLAC) under
``clips/<tour>/``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from edge.errors import StorageFullError
from edge.records import AudioPause, ClipReason, Counter, EdgeScore, NewClip
from edge.speech import SpeechGate
from edge.store import Store
from shared_features.sqlite import now

log = logging.getLogger(__name__)


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return int(shutil.disk_usage(p).free)


@dataclass
class SamplerStats:
    random: int = 0
    uncertain: int = 0
    flagged: int = 0
    skipped_budget: int = 0
    skipped_space: int = 0
    speech_suppressed: int = 0
    evicted: int = 0
    bytes_written: int = 0


@dataclass(frozen=True)
class ClipSource:
    """Where a clip's audio comes from (stored with it, sent as ``ClipMeta``)."""

    tour_uuid: str | None
    detection_uuid: str | None = None
    recording_uuid: str | None = None
    source: str | None = None
    source_offset: float | None = None
    start_offset: float = 0.0
    edge_top: tuple[EdgeScore, ...] = ()


@dataclass
class Sampler:
    store: Store
    clip_dir: Path
    gate: SpeechGate
    random_rate: float = 0.05
    margin: float = 0.1
    tour_budget: int = 50_000_000
    total_budget: int = 500_000_000
    fmt: str = "OGG"
    seed: int | None = None
    min_free_bytes: int = 200_000_000
    detection_rate: float = 0.5
    stats: SamplerStats = field(default_factory=SamplerStats)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        if self.fmt.upper() not in ("OGG", "FLAC"):
            raise ValueError(f"clip format must be OGG or FLAC, got {self.fmt}")
        self.paused: AudioPause | None = self.store.audio_pause()

    def reason(self, probs: np.ndarray, thr: np.ndarray, new_event: bool = False) -> ClipReason | None:
        """Why to keep this window, if at all. ``new_event``: a detection event starts in it — such
        windows are drawn at ``detection_rate`` (a stratified random sample, so that the cloud can
        confirm the detections themselves), all others at ``random_rate``."""
        top = int(np.argmax(probs))
        t = float(thr[top])
        if abs(float(probs[top]) - t) <= self.margin * min(1.0, t / 0.5):  # margin scales with low thresholds
            return ClipReason.UNCERTAIN
        if int(((probs >= 0.3) & (probs <= 0.7)).sum()) >= 2:
            return ClipReason.UNCERTAIN
        rate = max(self.random_rate, self.detection_rate) if new_event else self.random_rate
        if self.rng.random() < rate:
            return ClipReason.RANDOM
        return None

    def encode(self, samples: np.ndarray, sr: int) -> bytes:
        buf = io.BytesIO()
        x = np.clip(np.asarray(samples, np.float32), -1.0, 1.0)
        if self.fmt.upper() == "OGG":
            sf.write(buf, x, sr, format="OGG", subtype="VORBIS")
        else:
            sf.write(buf, x, sr, format="FLAC", subtype="PCM_16")
        return buf.getvalue()

    # ------------------------------------------------------------------ audio pause
    def _count(self, counter: Counter) -> None:
        try:
            self.store.add_to_counter(counter)
        except StorageFullError:
            log.debug("counter %s not stored: the database is full", counter)

    def pause(self, reason: str) -> None:
        """Stop writing audio (detections go on); recorded for status and sync."""
        if self.paused is not None and self.paused.reason == reason:
            return
        self.paused = AudioPause(reason, now())
        log.warning("audio paused: %s (detections are still stored)", reason)
        try:
            self.store.set_audio_pause(self.paused)
        except StorageFullError:
            log.debug("audio pause not stored: the database is full")

    def _resume(self) -> None:
        if self.paused is None:
            return
        log.info("audio resumed (%s no longer holds)", self.paused.reason)
        self.paused = None
        try:
            self.store.set_audio_pause(None)
        except StorageFullError:
            log.debug("audio resume not stored: the database is full")

    def _room_on_disk(self, size: int) -> bool:
        free = free_bytes(self.clip_dir)
        if free - size < self.min_free_bytes:
            self.pause(
                f"free space {free / 1e6:.0f} MB is below the {self.min_free_bytes / 1e6:.0f} MB watermark"
            )
            return False
        self._resume()
        return True

    # ------------------------------------------------------------------ budgets
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
                if c.tour_uuid != tour_uuid:
                    continue
            try:
                Path(c.path).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not delete %s: %s", c.path, exc)
                continue
            self.store.mark_evicted(c.uuid)
            self.stats.evicted += 1
            if fits():
                return True
        return fits()

    # ------------------------------------------------------------------ saving
    def save(self, samples: np.ndarray, sr: int, reason: ClipReason, where: ClipSource) -> str | None:
        """Gate, encode and store one clip; returns its UUID, or None when it was not kept (speech,
        low space, no budget — each counted)."""
        if self.gate.has_speech(samples, sr):
            self.stats.speech_suppressed += 1
            self._count(Counter.SPEECH_SUPPRESSED)
            log.info("speech in a %s window: its audio is not kept", reason)
            return None
        data = self.encode(samples, sr)
        if not self._room_on_disk(len(data)):
            self.stats.skipped_space += 1
            self._count(Counter.CLIPS_SKIPPED_SPACE)
            return None
        if not self._make_room(len(data), where.tour_uuid, reason is ClipReason.FLAGGED):
            self.stats.skipped_budget += 1
            self._count(Counter.CLIPS_SKIPPED_BUDGET)
            log.info("clip budget full: %s clip skipped (%d bytes)", reason, len(data))
            return None
        digest = hashlib.sha256(data).hexdigest()
        ext = "ogg" if self.fmt.upper() == "OGG" else "flac"
        path = self.clip_dir / (where.tour_uuid or "no-tour") / f"{digest}.{ext}"
        if path.exists():  # the same audio again (silence): its own file, or evicting one would
            path = path.with_name(f"{digest}-{os.urandom(4).hex()}.{ext}")  # delete the other's audio
        try:
            _write_durably(path, data)
        except OSError as exc:
            self.stats.skipped_space += 1
            self.pause("disk full" if exc.errno == errno.ENOSPC else f"cannot write clips: {exc.strerror}")
            self._count(Counter.CLIPS_SKIPPED_SPACE)
            return None
        try:
            u = self.store.add_clip(
                NewClip(
                    path=str(path),
                    sha256=digest,
                    bytes=len(data),
                    reason=reason,
                    tour_uuid=where.tour_uuid,
                    detection_uuid=where.detection_uuid,
                    recording_uuid=where.recording_uuid,
                    start_offset=where.start_offset,
                    source=where.source,
                    source_offset=where.source_offset,
                    duration_s=round(np.asarray(samples).size / sr, 3),
                    edge_top=where.edge_top,
                )
            )
        except StorageFullError:
            path.unlink(missing_ok=True)
            self.stats.skipped_space += 1
            self.pause("the database is full")
            return None
        setattr(self.stats, str(reason), getattr(self.stats, str(reason)) + 1)
        self.stats.bytes_written += len(data)
        return u


def _write_durably(path: Path, data: bytes) -> None:
    """Write, fsync and rename into place; a failed write leaves no partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
