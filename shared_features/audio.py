"""Audio input: decode → mono → float32 → resample to ``cfg.sample_rate``.

Supported containers are those libsndfile decodes: WAV, FLAC, OGG Vorbis, Opus and MP3 (plus
AIFF/AU/W64/CAF). Everything else raises :class:`UnsupportedFormatError`; a known container that
fails to decode raises :class:`AudioDecodeError`. Long recordings go through
:func:`iter_audio_chunks`, which never holds more than ``chunk_seconds`` of audio at once.

Hostile input is bounded before it is decoded: the header's sample rate must lie in
[:data:`MIN_SAMPLE_RATE`, ``max_sample_rate``] and its channel count in [1, ``max_channels``]
(else :class:`UnsupportedFormatError`); a declared length over ``max_duration`` is refused from the
header (:class:`AudioTooLongError`) — a 270 KB FLAC of silence that declares three hours is
refused without decoding a sample. When the header does not say how long the audio is (a streamed
FLAC, libsndfile's ``SF_COUNT_MAX``) or says less than the data holds, decoding stops as soon as it
passes ``max_duration``. Samples are read in blocks of at most :data:`READ_BLOCK_SAMPLES` (frames
× channels) and mixed to mono block by block, so memory stays bounded by the mono output.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import soundfile as sf
import soxr

from shared_features.config import DEFAULT, FeatureConfig
from shared_features.errors import (
    AudioDecodeError,
    AudioTooLongError,
    AudioTooShortError,
    ClippedAudioError,
    EmptyAudioError,
    InvalidSamplesError,
    SilentAudioError,
    UnsupportedFormatError,
)

log = logging.getLogger(__name__)

AudioSource = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]

#: Shortest recording accepted by default (seconds).
MIN_DURATION_S = 0.1
#: Longest recording :func:`load_audio` decodes in one piece by default (seconds); longer ones
#: must go through :func:`iter_audio_chunks`.
MAX_DURATION_S = 30 * 60.0
#: Sample rates :func:`load_audio` and :func:`iter_audio_chunks` accept (Hz): the slowest real
#: recorder settings up to ultrasonic recorders (AudioMoth: 384 kHz).
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 384_000
#: Channels accepted by default (multichannel arrays; libsndfile itself takes up to 1024).
MAX_CHANNELS = 32
#: Samples (frames × channels) read from the decoder at once.
READ_BLOCK_SAMPLES = 1 << 20
#: What libsndfile reports as the frame count when the header does not say (``SF_COUNT_MAX``).
UNKNOWN_FRAMES = 2**63 - 1
#: Peak below which a recording counts as silent (about -90 dBFS).
SILENCE_PEAK = 3e-5
#: Level at or above which a sample counts as clipped.
CLIP_LEVEL = 0.999
#: File extensions of the recordings we look for in folders (decoding itself sniffs the content).
AUDIO_EXTENSIONS = frozenset({".ogg", ".oga", ".opus", ".wav", ".flac", ".mp3", ".aiff", ".aif"})

# Magic numbers of the containers libsndfile decodes.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"RIFF", 0, "wav"),
    (b"RIFX", 0, "wav"),
    (b"RF64", 0, "wav"),
    (b"BW64", 0, "wav"),
    (b"fLaC", 0, "flac"),
    (b"OggS", 0, "ogg"),
    (b"ID3", 0, "mp3"),
    (b"FORM", 0, "aiff"),
    (b".snd", 0, "au"),
    (b"riff", 0, "w64"),
    (b"caff", 0, "caf"),
)


@dataclass(frozen=True)
class AudioInfo:
    """What the header says, before decoding."""

    source: str
    format: str
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


@dataclass(frozen=True)
class AudioQuality:
    """Level statistics of decoded samples."""

    peak: float
    rms_dbfs: float
    clipped_fraction: float

    @property
    def silent(self) -> bool:
        return self.peak < SILENCE_PEAK


def _describe(src: AudioSource) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return getattr(src, "name", None) or "<bytes>"


def _read_head(src: AudioSource, n: int = 16) -> bytes:
    if isinstance(src, (str, os.PathLike)):
        with open(src, "rb") as fh:
            return fh.read(n)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src[:n])
    pos = src.tell()
    head = src.read(n)
    src.seek(pos)
    return head


def sniff_format(head: bytes) -> str | None:
    """Container name from the first bytes, or ``None`` when it is no audio we know. Used only to
    word the error when libsndfile refuses a file (corrupt audio vs. not audio at all)."""
    for magic, offset, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    # MPEG audio frame sync (11 set bits), possibly after zero padding, without an ID3 tag.
    body = head.lstrip(b"\x00")
    if len(body) >= 2 and body[0] == 0xFF and (body[1] & 0xE0) == 0xE0:
        return "mp3"
    return None


def _open(src: AudioSource) -> tuple[sf.SoundFile, str]:
    """Open ``src`` with libsndfile; explain a refusal as corrupt audio or as no audio at all."""
    name = _describe(src)
    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        if not p.exists():
            raise FileNotFoundError(f"{name}: no such file")
        if p.is_dir():
            raise UnsupportedFormatError("is a directory, not an audio file", name)
        if p.stat().st_size == 0:
            raise EmptyAudioError("file is empty (0 bytes)", name)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise EmptyAudioError("no bytes", name)
    handle: str | os.PathLike[str] | IO[bytes]
    if isinstance(src, (bytes, bytearray, memoryview)):
        handle = io.BytesIO(bytes(src))
    else:
        handle = src
    try:
        f = sf.SoundFile(handle)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        # libsndfile said no: decide whether this is a broken audio file or no audio at all.
        if not isinstance(src, (str, os.PathLike, bytes, bytearray, memoryview)):
            src.seek(0)
        head = _read_head(src, 4096)
        fmt = sniff_format(head)
        if fmt is None:
            raise UnsupportedFormatError(
                f"not a supported audio container (first bytes {head[:8]!r}); "
                "supported: WAV, FLAC, OGG Vorbis/Opus, MP3, AIFF",
                name,
            ) from exc
        raise AudioDecodeError(
            f"{fmt} data could not be decoded ({exc}); file corrupt or truncated", name
        ) from exc
    return f, name


def audio_info(src: AudioSource) -> AudioInfo:
    """Header information without decoding the samples."""
    f, name = _open(src)
    with f:
        return AudioInfo(name, f.format.lower(), int(f.samplerate), int(f.channels), int(f.frames))


def _to_mono(block: np.ndarray) -> np.ndarray:
    """``[frames, channels]`` → ``[frames]`` float32 by averaging channels (samples near float32's
    limit overflow to ``inf`` here, which :func:`check_samples` then refuses)."""
    if block.ndim == 2:
        with np.errstate(over="ignore", invalid="ignore"):
            block = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
    return np.ascontiguousarray(block, dtype=np.float32)


def _known_frames(f: sf.SoundFile) -> int | None:
    """The header's frame count, or None when it does not say."""
    frames = int(f.frames)
    return None if frames < 0 or frames >= UNKNOWN_FRAMES else frames


def _check_header(
    f: sf.SoundFile,
    name: str,
    max_duration: float | None,
    max_sample_rate: int = MAX_SAMPLE_RATE,
    max_channels: int = MAX_CHANNELS,
) -> int:
    """Refuse from the header alone what must not be decoded; returns the sample rate."""
    sr, channels = int(f.samplerate), int(f.channels)
    if not MIN_SAMPLE_RATE <= sr <= max_sample_rate:
        raise UnsupportedFormatError(
            f"sample rate {sr} Hz outside the accepted [{MIN_SAMPLE_RATE}, {max_sample_rate}] Hz", name
        )
    if not 1 <= channels <= max_channels:
        raise UnsupportedFormatError(f"{channels} channels (at most {max_channels} accepted)", name)
    frames = _known_frames(f)
    if max_duration is not None and frames is not None and frames / sr > max_duration:
        raise AudioTooLongError(
            f"{frames / sr:.1f} s is longer than the {max_duration:.0f} s limit (from its header); "
            "read it with iter_audio_chunks()",
            name,
        )
    return sr


def _read_mono(f: sf.SoundFile, frames: int, name: str, where: str = "after the header") -> np.ndarray:
    """Up to ``frames`` frames as ``[n] float32`` mono, read in blocks of at most
    :data:`READ_BLOCK_SAMPLES` samples (fewer at the end of the audio)."""
    block = max(1, READ_BLOCK_SAMPLES // max(1, int(f.channels)))
    parts: list[np.ndarray] = []
    got = 0
    while got < frames:
        want = min(block, frames - got)
        try:
            data = f.read(want, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioDecodeError(
                f"decoding failed {where} ({exc}); file corrupt or truncated", name
            ) from exc
        if data.shape[0] == 0:
            break
        parts.append(_to_mono(data))
        got += data.shape[0]
        if data.shape[0] < want:
            break
    if not parts:
        return np.zeros(0, np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _read_all(f: sf.SoundFile, name: str, sr: int, max_duration: float | None) -> np.ndarray:
    """Every frame as mono; when the header does not say how many, decoding stops (refused) as
    soon as it passes ``max_duration``."""
    frames = _known_frames(f)
    if frames is not None:
        return _read_mono(f, frames, name)
    if max_duration is None:
        return _read_mono(f, UNKNOWN_FRAMES, name)
    limit = int(max_duration * sr)
    samples = _read_mono(f, limit + 1, name)
    if samples.size > limit:
        raise AudioTooLongError(
            f"decodes to more than the {max_duration:.0f} s limit (its header does not say how long it is); "
            "read it with iter_audio_chunks()",
            name,
        )
    return samples


def resample(samples: np.ndarray, orig_sr: int, target_sr: int, quality: str = "HQ") -> np.ndarray:
    """``[n] float32`` at ``orig_sr`` → ``[m] float32`` at ``target_sr`` (soxr)."""
    if orig_sr == target_sr:
        return np.ascontiguousarray(samples, dtype=np.float32)
    out = soxr.resample(samples.astype(np.float32, copy=False), orig_sr, target_sr, quality=quality)
    return np.ascontiguousarray(out, dtype=np.float32)


def audio_quality(samples: np.ndarray) -> AudioQuality:
    """Peak, RMS level (dBFS) and fraction of clipped samples of ``[n] float32`` audio."""
    if samples.size == 0:
        return AudioQuality(0.0, -np.inf, 0.0)
    a = np.abs(samples)
    peak = float(a.max())
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    rms_db = 20 * np.log10(rms) if rms > 0 else -np.inf
    return AudioQuality(peak, float(rms_db), float(np.mean(a >= CLIP_LEVEL)))


def check_samples(
    samples: np.ndarray,
    name: str,
    *,
    reject_silent: bool = False,
    reject_clipped: bool = False,
    max_clipped_fraction: float = 0.01,
) -> AudioQuality:
    """Raise on NaN/Inf (always), on silence or clipping (when asked); return the quality."""
    if not np.all(np.isfinite(samples)):
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        raise InvalidSamplesError(f"{bad} NaN or infinite samples", name)
    q = audio_quality(samples)
    if reject_silent and q.silent:
        raise SilentAudioError(f"silent: peak {q.peak:.2e} below {SILENCE_PEAK:.0e}", name)
    if reject_clipped and q.clipped_fraction > max_clipped_fraction:
        raise ClippedAudioError(
            f"clipped: {q.clipped_fraction:.1%} of samples at full scale (limit {max_clipped_fraction:.1%})",
            name,
        )
    if q.clipped_fraction > max_clipped_fraction:
        log.warning("%s: %.1f%% of samples are clipped", name, 100 * q.clipped_fraction)
    return q


def load_audio(
    src: AudioSource,
    cfg: FeatureConfig = DEFAULT,
    *,
    min_duration: float = MIN_DURATION_S,
    max_duration: float | None = MAX_DURATION_S,
    reject_silent: bool = False,
    reject_clipped: bool = False,
    max_sample_rate: int = MAX_SAMPLE_RATE,
    max_channels: int = MAX_CHANNELS,
) -> np.ndarray:
    """Decode ``src`` (path, bytes or binary file object) to ``[n] float32`` mono at
    ``cfg.sample_rate``. The header is checked before decoding (sample rate, channels, declared
    length; see the module docstring).

    Raises :class:`UnsupportedFormatError`, :class:`AudioDecodeError`, :class:`EmptyAudioError`,
    :class:`AudioTooShortError`, :class:`AudioTooLongError`, :class:`InvalidSamplesError`, and,
    when asked, :class:`SilentAudioError` / :class:`ClippedAudioError`.
    """
    f, name = _open(src)
    with f:
        if f.frames == 0:
            raise EmptyAudioError("header is valid but holds no samples", name)
        sr = _check_header(f, name, max_duration, max_sample_rate, max_channels)
        samples = _read_all(f, name, sr, max_duration)
    if samples.size == 0:
        raise EmptyAudioError("decoded to zero samples", name)
    duration = samples.size / sr
    if duration < min_duration:
        raise AudioTooShortError(f"{duration:.3f} s is shorter than the {min_duration} s minimum", name)
    if max_duration is not None and duration > max_duration:
        raise AudioTooLongError(f"{duration:.1f} s exceeds the {max_duration:.0f} s limit", name)
    check_samples(samples, name, reject_silent=reject_silent, reject_clipped=reject_clipped)
    return _finite(resample(samples, sr, cfg.sample_rate, cfg.resample_quality), name)


def _finite(out: np.ndarray, name: str) -> np.ndarray:
    """Float samples near float32's limit (~3e38, a corrupt float WAV) are finite when read but
    overflow when channels are mixed or resampled: refused, never passed on as ``inf``."""
    if not np.all(np.isfinite(out)):
        raise InvalidSamplesError("samples too large: they overflow when mixed or resampled", name)
    return out


def iter_audio_chunks(
    src: AudioSource,
    cfg: FeatureConfig = DEFAULT,
    *,
    chunk_seconds: float = 60.0,
    start_seconds: float = 0.0,
    stop_seconds: float | None = None,
) -> Iterator[np.ndarray]:
    """Yield consecutive ``[n] float32`` mono chunks at ``cfg.sample_rate`` of any length of audio.

    Memory stays bounded by ``chunk_seconds`` of source audio; resampling is continuous across
    chunk boundaries (``soxr.ResampleStream``), so the concatenation equals a one-piece resample up
    to the resampler's filter delay handling (tested).

    ``start_seconds`` / ``stop_seconds`` read only that part of the recording (source frames
    ``[round(start * sr), round(stop * sr))``; the end of the file when ``stop_seconds`` is None or
    beyond it). The start is reached by seeking, which is sample-exact for PCM containers (WAV,
    FLAC, AIFF) and only approximate for MP3, so callers that cut recordings into parts cut only
    the former. A part that starts after the end of the audio yields nothing.
    """
    if start_seconds < 0 or (stop_seconds is not None and stop_seconds < start_seconds):
        raise ValueError(f"need 0 <= start_seconds <= stop_seconds, got {start_seconds}, {stop_seconds}")
    f, name = _open(src)
    with f:
        if f.frames == 0:
            raise EmptyAudioError("header is valid but holds no samples", name)
        sr = _check_header(f, name, None)
        first = int(round(start_seconds * sr))
        remaining = None if stop_seconds is None else int(round(stop_seconds * sr)) - first
        if first:
            if first >= f.frames > 0:
                return
            try:
                f.seek(first)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise AudioDecodeError(f"cannot seek to {start_seconds:.1f} s ({exc})", name) from exc
        block = max(1, int(chunk_seconds * sr))
        stream = None
        if sr != cfg.sample_rate:
            stream = soxr.ResampleStream(
                sr, cfg.sample_rate, 1, dtype="float32", quality=cfg.resample_quality
            )
        total = 0
        while True:
            want = block if remaining is None else min(block, remaining - total)
            where = f"at {(first + total) / sr:.1f} s"
            mono = _read_mono(f, want, name, where) if want > 0 else np.zeros(0, np.float32)
            last = mono.size < block or (remaining is not None and total + mono.size >= remaining)
            total += mono.size
            if mono.size:
                check_samples(mono, name)
            if stream is not None:
                out = stream.resample_chunk(mono, last=last)
            else:
                out = mono
            if out.size:
                yield _finite(np.ascontiguousarray(out, dtype=np.float32), name)
            if last:
                break
        if total == 0 and first == 0:
            raise EmptyAudioError("decoded to zero samples", name)
