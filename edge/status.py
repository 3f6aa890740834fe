"""The device's status in one typed snapshot, from the store's named operations: what ``edge status``
prints, what the TUI shows (posted by its workers), and what sync sends as ``DeviceStatus``."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from edge.records import AudioPause, Counter, Pending, SyncInfo
from edge.store import Store

log = logging.getLogger(__name__)


def app_version() -> str:
    try:
        return version("silencio")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class DeviceReport:
    model_version: str | None
    app_version: str
    pending: Pending
    clips_stored: int
    clip_bytes: int
    speech_suppressed: int
    clips_skipped_budget: int
    clips_skipped_space: int
    audio_pause: AudioPause | None
    free_bytes: int | None
    sync: SyncInfo

    @property
    def audio_paused(self) -> bool:
        return self.audio_pause is not None

    def wire(self) -> dict[str, Any]:
        """``DeviceStatus`` (wire v2, ``cloud/schemas.py``)."""
        return {
            "model_version": self.model_version,
            "app_version": self.app_version,
            "pending_detections": self.pending.detections,
            "pending_clips": self.pending.clips,
            "clips_stored": self.clips_stored,
            "speech_suppressed": self.speech_suppressed,
            "audio_paused": self.audio_paused,
            "free_bytes": self.free_bytes,
        }

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["audio_paused"] = self.audio_paused
        out["pending"]["total"] = self.pending.total
        return out


def device_report(
    store: Store, clip_dir: Path | None = None, model_version: str | None = None
) -> DeviceReport:
    """``model_version``: the running model's (default: the installed package's, if any)."""
    from edge.sampler import free_bytes

    counters = store.counters()
    clips = store.clips()
    if model_version is None:
        active = store.active_model()
        model_version = active.version if active is not None else None
    return DeviceReport(
        model_version=model_version,
        app_version=app_version(),
        pending=store.pending(),
        clips_stored=len(clips),
        clip_bytes=sum(c.bytes for c in clips),
        speech_suppressed=counters[Counter.SPEECH_SUPPRESSED],
        clips_skipped_budget=counters[Counter.CLIPS_SKIPPED_BUDGET],
        clips_skipped_space=counters[Counter.CLIPS_SKIPPED_SPACE],
        audio_pause=store.audio_pause(),
        free_bytes=free_bytes(clip_dir) if clip_dir is not None else None,
        sync=store.sync_info(),
    )
