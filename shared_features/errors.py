"""The documented exceptions of ``shared_features``.

Every error carries the offending value in its message. Callers translate them to CLI messages,
HTTP status codes or TUI notifications at their own boundary; this package never swallows one.
"""

from __future__ import annotations


class SilencioFeatureError(Exception):
    """Base class of every error raised by ``shared_features``."""


class AudioError(SilencioFeatureError):
    """Base class of the audio input errors. ``source`` names the file or buffer."""

    def __init__(self, message: str, source: str = "<bytes>") -> None:
        super().__init__(f"{source}: {message}")
        self.source = source


class UnsupportedFormatError(AudioError):
    """The input is not an audio container we decode (text, image, AAC/M4A, …)."""


class AudioDecodeError(AudioError):
    """A known audio container that could not be decoded: corrupt or truncated."""


class EmptyAudioError(AudioError):
    """Zero bytes, or a valid header with zero samples."""


class AudioTooShortError(AudioError):
    """Shorter than the configured minimum duration."""


class AudioTooLongError(AudioError):
    """Longer than the configured maximum; use the chunked reader for long recordings."""


class InvalidSamplesError(AudioError):
    """NaN or infinite samples."""


class SilentAudioError(AudioError):
    """All samples (near) zero; raised only when the caller asks to reject silence."""


class ClippedAudioError(AudioError):
    """Too many samples at full scale; raised only when the caller asks to reject clipping."""


class FeatureConfigError(SilencioFeatureError, ValueError):
    """An invalid or inconsistent ``FeatureConfig``."""


class FingerprintMismatchError(SilencioFeatureError):
    """A model was made with other features than the code computes; it must not be loaded."""


class LabelError(SilencioFeatureError, ValueError):
    """An unknown species code, or a malformed taxonomy / label list."""
