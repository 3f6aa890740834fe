"""Audio sources for the agent. Each yields :class:`Segment` objects — a continuous stream of
``[n] float32`` mono chunks at 32 kHz with its name and, for a file, when the recording started —
so features never run across two recordings.

* :class:`MicrophoneSource` — a sounddevice input stream (device by name or index), a bounded
  queue as ring buffer (overflows counted and logged, never blocking the audio thread), a lost
  device retried with backoff without ending the session.
* :class:`FileSource` — replays a recording in real time or as fast as possible (the simulated
  microphone of demos and tests). Its start time comes from ``start``, the file name or the file's
  modification time (:func:`edge.recording.recording_start`); a recording that was cut short keeps
  what decoded and says so in ``Segment.warning``.
* :class:`DirectorySource` — watches a folder and processes each new recording once.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soundfile as sf

from edge.errors import CaptureError
from edge.recording import container_problem, recording_start
from edge.records import StartBasis
from shared_features import DEFAULT, iter_audio_chunks
from shared_features.audio import AUDIO_EXTENSIONS
from shared_features.errors import AudioError

log = logging.getLogger(__name__)


@dataclass
class Segment:
    """One continuous stream of audio. ``started_at`` None: the device clock when it begins (live
    audio). ``warning`` is set by the source while decoding (e.g. a truncated file)."""

    name: str
    chunks: Iterator[np.ndarray] = field(default_factory=lambda: iter(()))
    path: Path | None = None
    started_at: datetime | None = None
    start_basis: StartBasis = StartBasis.CLOCK
    warning: str | None = None


class AudioSource(Protocol):
    name: str

    def segments(self) -> Iterator[Segment]: ...

    def stop(self) -> None: ...


@dataclass
class CaptureStats:
    overflows: int = 0
    dropped_chunks: int = 0
    restarts: int = 0
    level_dbfs: float = -120.0
    seconds: float = 0.0

    def update_level(self, x: np.ndarray) -> None:
        if x.size:
            rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
            self.level_dbfs = 20 * np.log10(max(rms, 1e-6))
            self.seconds += x.size / DEFAULT.sample_rate


class FileSource:
    """One recording as one segment; ``realtime`` paces it like a live microphone. ``start``: when
    the recording began (else from its file name or modification time, in time zone ``tz``)."""

    def __init__(
        self,
        path: Path | str,
        *,
        realtime: bool = False,
        chunk_seconds: float = 0.5,
        start: datetime | None = None,
        tz: str = "UTC",
    ) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.realtime = realtime
        self.chunk_seconds = chunk_seconds
        self.start = start
        self.tz = tz
        self.stats = CaptureStats()
        self._stop = False

    def segment(self) -> Segment:
        started, basis = recording_start(self.path, self.start, self.tz)
        seg = Segment(self.name, path=self.path, started_at=started, start_basis=basis)
        seg.chunks = self._chunks(seg)
        return seg

    def _decoded(self, seg: Segment) -> Iterator[np.ndarray]:
        """The file's audio; a decoding error after some audio ends the segment with a warning (what
        decoded is kept), before any audio it is raised."""
        total = 0
        try:
            # short reads: a decoding error mid-file loses at most one of them
            for block in iter_audio_chunks(self.path, DEFAULT, chunk_seconds=2.0):
                total += block.size
                yield block
        except AudioError as exc:  # corrupt or truncated mid-stream (or NaN samples)
            if total == 0:
                raise
            seg.warning = (
                f"decoding stopped at {total / DEFAULT.sample_rate:.1f} s ({exc}); kept what decoded"
            )
            log.warning("%s: %s", self.name, seg.warning)
            return
        if self._stop:
            return
        problem = container_problem(self.path)
        if problem is None:
            problem = _short_of_header(self.path, total / DEFAULT.sample_rate)
        if problem is not None:
            seg.warning = f"{problem}; analysed the {total / DEFAULT.sample_rate:.1f} s that decoded"
            log.debug("%s: %s", self.name, seg.warning)

    def _chunks(self, seg: Segment) -> Iterator[np.ndarray]:
        t0 = time.monotonic()
        played = 0.0
        step = int(self.chunk_seconds * DEFAULT.sample_rate)
        for block in self._decoded(seg):
            for i in range(0, block.size, step):
                if self._stop:
                    return
                x = block[i : i + step]
                self.stats.update_level(x)
                if self.realtime:
                    played += x.size / DEFAULT.sample_rate
                    ahead = played - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
                yield x

    def segments(self) -> Iterator[Segment]:
        yield self.segment()

    def stop(self) -> None:
        self._stop = True


def _short_of_header(path: Path, decoded_s: float) -> str | None:
    """Formats whose header states the length (WAV, FLAC, AIFF): fewer seconds decoded than stated."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        return None
    if info.format not in ("WAV", "FLAC", "AIFF") or not info.frames:
        return None
    stated = info.frames / info.samplerate
    if decoded_s < stated - 0.05:
        return f"the header states {stated:.1f} s, {decoded_s:.1f} s decoded (truncated)"
    return None


class DirectorySource:
    """New recordings appearing in ``folder`` (by modification time), each processed once.
    ``idle_exit``: stop after that many seconds without a new file (None: watch forever)."""

    def __init__(
        self,
        folder: Path | str,
        *,
        poll_seconds: float = 1.0,
        idle_exit: float | None = None,
        seen: set[str] | None = None,
        tz: str = "UTC",
    ) -> None:
        self.folder = Path(folder)
        self.tz = tz
        self.name = str(self.folder)
        self.poll = poll_seconds
        self.idle_exit = idle_exit
        self.seen: set[str] = set(seen or ())
        self.stats = CaptureStats()
        self._stop = False

    def _ready(self) -> list[Path]:
        files = [
            p
            for p in self.folder.iterdir()
            if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS and str(p) not in self.seen
        ]
        # skip files still being written: their size must be stable across one poll
        return sorted(files, key=lambda p: p.stat().st_mtime)

    def segments(self) -> Iterator[Segment]:
        if not self.folder.is_dir():
            raise CaptureError(f"{self.folder}: not a directory")
        idle_since = time.monotonic()
        sizes: dict[Path, int] = {}
        while not self._stop:
            new = False
            for p in self._ready():
                size = p.stat().st_size
                if sizes.get(p) != size:
                    sizes[p] = size
                    continue
                self.seen.add(str(p))
                new = True
                src = FileSource(p, start=None, tz=self.tz)
                src.stats = self.stats
                yield src.segment()
            if new:
                idle_since = time.monotonic()
            elif self.idle_exit is not None and time.monotonic() - idle_since > self.idle_exit:
                return
            time.sleep(self.poll)

    def stop(self) -> None:
        self._stop = True


@dataclass
class MicrophoneSource:
    """The device microphone through sounddevice. ``sd``: the sounddevice module (tests pass a fake
    one whose ``InputStream`` feeds prepared audio into the same callback)."""

    device: int | str | None = None
    block_seconds: float = 0.25
    queue_seconds: float = 30.0
    max_restarts: int = 20
    sd: Any = None
    name: str = "microphone"
    stats: CaptureStats = field(default_factory=CaptureStats)

    def __post_init__(self) -> None:
        if self.sd is None:
            try:
                import sounddevice
            except OSError as exc:  # PortAudio missing
                raise CaptureError(f"no audio system: {exc} (on Debian: apt install libportaudio2)") from None
            self.sd = sounddevice
        self._q: queue.Queue[np.ndarray] = queue.Queue(
            maxsize=max(4, int(self.queue_seconds / self.block_seconds))
        )
        self._stop = False
        self._stream: Any = None
        self._rate = DEFAULT.sample_rate
        self._lost = False

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status and getattr(status, "input_overflow", False):
            self.stats.overflows += 1
            log.warning("microphone input overflow #%d", self.stats.overflows)
        x = np.asarray(indata, np.float32)
        x = x.mean(axis=1) if x.ndim == 2 else x.reshape(-1)
        try:
            self._q.put_nowait(x.copy())
        except queue.Full:  # the consumer is behind: drop, count, never block the audio thread
            self.stats.dropped_chunks += 1

    def _finished(self) -> None:
        if not self._stop:
            self._lost = True

    def _open(self) -> None:
        sd = self.sd
        rate = DEFAULT.sample_rate
        try:
            sd.check_input_settings(device=self.device, samplerate=rate, channels=1, dtype="float32")
        except Exception:  # noqa: BLE001 - the device cannot do 32 kHz: capture natively, resample
            info = sd.query_devices(self.device, "input")
            rate = int(info["default_samplerate"])
        self._rate = rate
        self._stream = sd.InputStream(
            device=self.device,
            samplerate=rate,
            channels=1,
            dtype="float32",
            blocksize=int(self.block_seconds * rate),
            callback=self._callback,
            finished_callback=self._finished,
        )
        self._stream.start()
        self._lost = False
        log.info("microphone %r open at %d Hz", self.device, rate)

    def _close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.stop()
                self._stream.close()
            except Exception as exc:  # noqa: BLE001 - a lost device may fail to close; it is gone anyway
                log.debug("closing the stream: %s", exc)
            self._stream = None

    def _chunks(self) -> Iterator[np.ndarray]:
        import soxr

        resampler = (
            None
            if self._rate == DEFAULT.sample_rate
            else soxr.ResampleStream(self._rate, DEFAULT.sample_rate, 1, dtype="float32")
        )
        while not self._stop:
            try:
                x = self._q.get(timeout=0.5)
            except queue.Empty:
                if self._lost or (self._stream is not None and not self._stream.active):
                    return  # device lost: the caller reopens it
                continue
            if resampler is not None:
                x = resampler.resample_chunk(x)
            self.stats.update_level(x)
            yield x

    def segments(self) -> Iterator[Segment]:
        delay = 0.5
        while not self._stop:
            try:
                self._open()
            except Exception as exc:  # noqa: BLE001 - PortAudio raises many kinds; retry them all
                self.stats.restarts += 1
                if self.stats.restarts > self.max_restarts:
                    raise CaptureError(
                        f"microphone {self.device!r} failed {self.stats.restarts} times: {exc}"
                    ) from exc
                log.warning("microphone unavailable (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.5
            yield Segment(f"{self.name}-{self.stats.restarts}", self._chunks())
            self._close()
            if not self._stop:
                self.stats.restarts += 1
                log.warning(
                    "microphone stream ended unexpectedly; reopening (restart %d)", self.stats.restarts
                )
                if self.stats.restarts > self.max_restarts:
                    raise CaptureError(f"microphone {self.device!r} lost {self.stats.restarts} times")

    def stop(self) -> None:
        self._stop = True
        self._close()
