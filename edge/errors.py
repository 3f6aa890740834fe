"""The documented exceptions of ``edge``; the CLI and the TUI turn them into messages."""

from __future__ import annotations


class EdgeError(Exception):
    """Base class of the device's errors."""


class NoModelError(EdgeError):
    """No installed model package and no taxonomy for the BirdNET fallback."""


class CaptureError(EdgeError):
    """The microphone (or source) failed in a way retrying did not fix."""


class SyncError(EdgeError):
    """The cloud refused or could not be reached after the retries (nothing is lost: it is retried)."""


class UpdateError(EdgeError):
    """A model update that failed its checks (sha256, fingerprint, labels); the old model stays."""


class StorageFullError(EdgeError):
    """The disk (or the database's size limit) is full: the write was rolled back; what was committed
    before stays. Audio stops first; detections are retried."""


class InputError(EdgeError):
    """An input path that cannot be analysed (missing, not audio, a folder without recordings)."""
