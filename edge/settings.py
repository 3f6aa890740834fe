"""Device settings: defaults, then the enrolment file (``silencio edge enroll``: cloud URL, token,
release key), then environment (``SILENCIO_EDGE_*``), then command-line flags. All state lives
under ``$SILENCIO_HOME/edge``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared_features.labels import taxonomy_path
from shared_features.paths import home


class EdgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SILENCIO_EDGE_", extra="ignore")

    home: Path = Field(default_factory=home)
    #: the cloud service and this device's token (``silencio cloud add-device``)
    cloud_url: str | None = None
    token: str | None = None
    #: the cloud's release public key (``ed25519:…``, printed by ``silencio cloud keygen``): a model
    #: update is installed only when signed by it (or by a key it rotated to); none: every update refused
    release_key: str | None = None
    #: the label space (BirdCLEF taxonomy.csv); default: the El Silencio taxonomy shipped with the package
    taxonomy: Path | None = None
    #: detection threshold (a species' top score must reach it) for species without their own; when
    #: not set, the active release's default_threshold (edge/thresholds.py)
    threshold: float = 0.5
    #: per-species thresholds ({"code": threshold}): when set, they replace the active release's
    thresholds_file: Path | None = None
    stride_seconds: float = 2.5
    #: clip sampling: share of windows kept at random (1: every window is a candidate), and the budgets
    random_clip_rate: float = Field(default=0.05, ge=0, le=1)
    #: share of the windows where a detection event starts that are kept (for the cloud to confirm)
    detection_clip_rate: float = Field(default=0.5, ge=0, le=1)
    uncertain_margin: float = 0.1
    #: seconds of audio before the second uncertain clip of the same top species (0: keep every one);
    #: each further one waits twice as long as the one before, up to uncertain_clip_max_gap_s
    uncertain_clip_gap_s: float = Field(default=30.0, ge=0)
    uncertain_clip_max_gap_s: float = Field(default=600.0, ge=0)
    #: keep uncertain windows' audio at all (off: only random, detection and flagged clips)
    uncertain_clips: bool = True
    tour_clip_budget_mb: float = 50.0
    total_clip_budget_mb: float = 500.0
    clip_format: str = "OGG"  # OGG (Vorbis) or FLAC
    #: free-space watermark: below it no audio (clips) is written, detections keep committing
    min_free_mb: float = Field(default=200.0, ge=0)
    #: the speech gate (Silero VAD): a window holds speech when this many seconds score ≥ threshold
    speech_threshold: float = Field(default=0.5, gt=0, lt=1)
    speech_min_seconds: float = Field(default=0.25, gt=0)
    #: the time zone of recorders' file names and of --start without an offset (IANA name)
    recorder_timezone: str = "UTC"
    #: sync: detections per request, timeouts and retries
    sync_batch: int = 100
    sync_timeout_s: float = 10.0
    sync_retries: int = 4
    threads: int = 1
    #: a tour's guide and place: within the wire format's limits (``cloud/schemas.py`` ``TourIn``),
    #: so that the cloud never refuses a whole sync batch for one tour
    guide: str = Field(default="guide", min_length=1, max_length=200)
    location: str | None = Field(default=None, max_length=200)
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)

    @model_validator(mode="before")
    @classmethod
    def _enrolment(cls, data: Any) -> Any:
        """Cloud URL, token and release key from the enrolment file where neither a flag nor the
        environment gave them."""
        if not isinstance(data, dict) or all(data.get(k) for k in ("cloud_url", "token", "release_key")):
            return data
        from edge.enrolment import read_enrolment

        enrolled = read_enrolment(Path(data.get("home") or home()))
        return {**data, **{k: v for k, v in enrolled.items() if not data.get(k)}}

    @property
    def root(self) -> Path:
        return self.home / "edge"

    @property
    def db_path(self) -> Path:
        return self.root / "edge.db"

    @property
    def clip_dir(self) -> Path:
        return self.root / "clips"

    @property
    def log_path(self) -> Path:
        return self.root / "edge.log"

    @property
    def model_dir(self) -> Path:
        return self.root / "models"

    @property
    def taxonomy_path(self) -> Path:
        """The label space's taxonomy: the setting (resolved against the working directory) or the
        El Silencio taxonomy shipped with the package."""
        return taxonomy_path(self.taxonomy)
