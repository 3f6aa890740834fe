"""Which audio the device keeps for the cloud, under a per-tour and a total byte budget, a free-space
watermark, and the speech gate.

About ``random_rate`` of the windows at random, and ``detection_rate`` of the windows where a
detection event starts (a stratified random sample: the cloud confirms detections only through
their clips); *uncertain* windows (the top score within
``margin`` of its threshold, or two or more species between 0.3 and 0.7), paced per top species:
the first at once, the next after ``uncertain_gap_s`` seconds of audio, and each further one after
twice the previous wait, up to ``uncertain_max_gap_s`` (a long stretch of one ambiguous caller or
noise would otherwise keep every window: 117 of 239 windows in 10 minutes of real audio with the
demo's student, each costing the speech gate and the encoder ~24 ms of CPU and the tour's budget
~45 kB; the pacing starts again with each stream of audio); ``uncertain=False`` keeps none; and
everything the guide flags. Before a clip is written:

1. the speech gate listens: a window with human speech keeps its detection but not its audio
   (counted as ``speech_suppressed``) — speech never leaves the device and is never stored;
2. free space: below the watermark (``min_free_bytes``) audio *pauses* — no clip is written, the
   pause is recorded in the store (status, TUI, ``DeviceStatus.audio_paused``) — while detections
   keep committing; it resumes by itself once there is room again;
3. the budgets: when a clip does not fit, already-synced clips are evicted oldest first; unsynced
   clips (and detections) are never deleted — if nothing can be evicted, the clip is skipped.

Space and budgets are checked twice: before the speech gate and the encoder, against the size of
the last clip written (a clip that cannot fit costs no CPU: a full tour budget on a long tour or a
paused disk would otherwise gate and encode every candidate only to drop it), and again with the
encoded size before the write.

A full disk while writing the clip (``ENOSPC``) or its row (:class:`StorageFullError`) pauses audio
the same way; the partial file is removed. Clips are stored compressed (OGG Vorbis, or FLAC) under
``clips/<tour>/``.

Off the detection path: the agent hands a window's clip to :meth:`Sampler.submit`, which returns at
once; one worker thread runs the speech gate, the encoder and the writes (the VAD and the encoder
are native code that releases the GIL). The agent commits and shows detections without waiting for
them and :meth:`Sampler.drain` waits for what is queued (the agent calls it when a run ends). At
most ``queue_clips`` clips wait: beyond that :meth:`submit` blocks until the worker catches up
(backpressure, no clip dropped). A clip the guide flags is saved at once (:meth:`Sampler.save`).
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import queue
import random
import shutil
import threading
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
    #: when the clip's audio was recorded (UTC ISO; a replayed file's recording time + offset);
    #: None: now
    recorded_at: str | None = None


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
    #: clips waiting for the worker at most; :meth:`submit` blocks beyond that
    queue_clips: int = 8
    #: seconds of audio before the second uncertain clip of the same top species (0: every one);
    #: each further one waits twice as long as the one before, up to ``uncertain_max_gap_s``
    uncertain_gap_s: float = 30.0
    uncertain_max_gap_s: float = 600.0
    #: keep uncertain windows at all (random, detection and flagged clips are not affected)
    uncertain: bool = True

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        if self.fmt.upper() not in ("OGG", "FLAC"):
            raise ValueError(f"clip format must be OGG or FLAC, got {self.fmt}")
        self.paused: AudioPause | None = self.store.audio_pause()
        self._lock = threading.RLock()  # budgets, pause state, files and rows: one clip at a time
        self._gate_lock = threading.Lock()  # one speech detector, not reentrant
        self._jobs: queue.Queue[_Job] = queue.Queue(maxsize=max(1, self.queue_clips))
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None
        # top species index -> (audio time of its last uncertain clip, uncertain clips kept so far)
        self._last_uncertain: dict[int, tuple[float, int]] = {}
        self._typical_bytes = 0  # size of the last clip written: the pre-check's estimate

    def reason(
        self, probs: np.ndarray, thr: np.ndarray, new_event: bool = False, at: float | None = None
    ) -> ClipReason | None:
        """Why to keep this window, if at all. ``new_event``: a detection event starts in it — such
        windows are drawn at ``detection_rate`` (a stratified random sample, so that the cloud can
        confirm the detections themselves), all others at ``random_rate``. ``at``: the window's start
        in seconds of audio (for ``uncertain_gap_s``; None: no gap is kept)."""
        top = int(np.argmax(probs))
        t = float(thr[top])
        # the margin scales with low thresholds
        near = abs(float(probs[top]) - t) <= self.margin * min(1.0, t / 0.5)
        if self.uncertain and (near or int(((probs >= 0.3) & (probs <= 0.7)).sum()) >= 2):
            if at is None:
                return ClipReason.UNCERTAIN
            last, kept = self._last_uncertain.get(top, (None, 0))
            if last is None or at < last:  # the first of this species, or a new stream of audio
                last, kept = None, 0
            if last is None or at - last >= self.uncertain_wait(kept):
                self._last_uncertain[top] = (at, kept + 1)
                return ClipReason.UNCERTAIN
        rate = max(self.random_rate, self.detection_rate) if new_event else self.random_rate
        if self.rng.random() < rate:
            return ClipReason.RANDOM
        return None

    def uncertain_wait(self, kept: int) -> float:
        """Seconds of audio an uncertain clip of a species waits after the last one, when ``kept``
        (≥ 1) of them were kept so far: ``uncertain_gap_s``, then doubling, at most
        ``uncertain_max_gap_s``."""
        if kept <= 0 or self.uncertain_gap_s <= 0:
            return 0.0
        cap = max(self.uncertain_max_gap_s, self.uncertain_gap_s)
        return min(self.uncertain_gap_s * 2.0 ** min(kept - 1, 30), cap)

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
        with self._lock:
            if self.paused is not None and self.paused.reason == reason:
                return
            self.paused = AudioPause(reason, now())
            log.warning("audio paused: %s (detections are still stored)", reason)
            try:
                self.store.set_audio_pause(self.paused)
            except StorageFullError:
                log.debug("audio pause not stored: the database is full")

    def _resume(self) -> None:
        with self._lock:
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
    def _fits(self, size: int, tour_uuid: str | None, flagged: bool) -> bool:
        total_ok = self.store.clip_bytes() + size <= self.total_budget
        tour_ok = flagged or tour_uuid is None or self.store.clip_bytes(tour_uuid) + size <= self.tour_budget
        return total_ok and tour_ok

    def _only_tour_full(self, size: int, tour_uuid: str | None, flagged: bool) -> bool:
        """Whether a clip of ``size`` bytes fits the total budget and only its tour's is exceeded:
        then only that tour's synced clips may be evicted for it."""
        return tour_uuid is not None and not flagged and self.store.clip_bytes() + size <= self.total_budget

    def _may_fit(self, size: int, tour_uuid: str | None, flagged: bool) -> bool:
        """Whether a clip of ``size`` bytes fits, or would after evicting synced clips (nothing is
        evicted here)."""
        if self._fits(size, tour_uuid, flagged):
            return True
        only_tour = self._only_tour_full(size, tour_uuid, flagged)
        return any(not only_tour or c.tour_uuid == tour_uuid for c in self.store.evictable_clips())

    def _make_room(self, size: int, tour_uuid: str | None, flagged: bool) -> bool:
        if self._fits(size, tour_uuid, flagged):
            return True
        for c in self.store.evictable_clips():
            if self._only_tour_full(size, tour_uuid, flagged) and c.tour_uuid != tour_uuid:
                continue  # only the tour budget is exceeded: evict this tour's synced clips first
            try:
                Path(c.path).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not delete %s: %s", c.path, exc)
                continue
            self.store.mark_evicted(c.uuid)
            self.stats.evicted += 1
            if self._fits(size, tour_uuid, flagged):
                return True
        return self._fits(size, tour_uuid, flagged)

    def _admit(self, size: int, reason: ClipReason, where: ClipSource, *, evict: bool) -> bool:
        """Room for a clip of ``size`` bytes on disk (above the watermark) and in the budgets —
        evicting synced clips when ``evict``, else only checking that evicting would make room.
        A clip without room is counted (space or budget). Call under ``_lock``."""
        if not self._room_on_disk(size):
            self.stats.skipped_space += 1
            self._count(Counter.CLIPS_SKIPPED_SPACE)
            return False
        flagged = reason is ClipReason.FLAGGED
        fits = (self._make_room if evict else self._may_fit)(size, where.tour_uuid, flagged)
        if not fits:
            self.stats.skipped_budget += 1
            self._count(Counter.CLIPS_SKIPPED_BUDGET)
            log.info(
                "clip budget full: %s clip skipped (%s%d bytes)",
                reason,
                "" if evict else "before encoding, ~",
                size,
            )
        return fits

    def _precheck(self, reason: ClipReason, where: ClipSource) -> bool:
        """Before the speech gate and the encoder: is there room for a clip of the last clip's size
        (before the first clip, of one byte)? A clip that cannot be kept is counted (space or
        budget) and costs no more CPU."""
        with self._lock:
            return self._admit(max(self._typical_bytes, 1), reason, where, evict=False)

    # ------------------------------------------------------------------ the worker
    def submit(self, samples: np.ndarray, sr: int, reason: ClipReason, where: ClipSource) -> None:
        """Queue one clip for the worker (gate, encode, store) and return at once; blocks only while
        ``queue_clips`` clips are already waiting. ``samples`` are copied. A failure of an earlier
        clip (other than a full disk or budget, which are handled and counted) is raised here."""
        self._raise_error()
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="clip-writer", daemon=True)
            self._worker.start()
        self._jobs.put(_Job(np.array(samples, np.float32), sr, reason, where))

    def drain(self, raise_errors: bool = True) -> None:
        """Wait until every submitted clip is written, skipped or suppressed."""
        self._jobs.join()
        if raise_errors:
            self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if self._error is None:  # after a failure the queue empties without writing
                    self.save(job.samples, job.sr, job.reason, job.where)
            except Exception as exc:  # noqa: BLE001 - kept and raised on the agent's thread
                log.error("the clip writer failed: %s", exc)
                self._error = exc
            finally:
                self._jobs.task_done()

    # ------------------------------------------------------------------ saving
    def save(self, samples: np.ndarray, sr: int, reason: ClipReason, where: ClipSource) -> str | None:
        """Gate, encode and store one clip now; returns its UUID, or None when it was not kept
        (speech, low space, no budget — each counted). Thread-safe."""
        if not self._precheck(reason, where):
            return None
        with self._gate_lock:
            speech = self.gate.has_speech(samples, sr)
        if speech:
            with self._lock:
                self.stats.speech_suppressed += 1
                self._count(Counter.SPEECH_SUPPRESSED)
            log.info("speech in a %s window: its audio is not kept", reason)
            return None
        data = self.encode(samples, sr)
        with self._lock:
            return self._store(data, samples, sr, reason, where)

    def _store(
        self, data: bytes, samples: np.ndarray, sr: int, reason: ClipReason, where: ClipSource
    ) -> str | None:
        if not self._admit(len(data), reason, where, evict=True):
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
                    recorded_at=where.recorded_at,
                )
            )
        except StorageFullError:
            path.unlink(missing_ok=True)
            self.stats.skipped_space += 1
            self.pause("the database is full")
            return None
        setattr(self.stats, str(reason), getattr(self.stats, str(reason)) + 1)
        self.stats.bytes_written += len(data)
        self._typical_bytes = len(data)
        return u


@dataclass(frozen=True)
class _Job:
    samples: np.ndarray  # [n] float32, the sampler's own copy
    sr: int
    reason: ClipReason
    where: ClipSource


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
