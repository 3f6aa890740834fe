"""Cloud settings: defaults, then environment (``SILENCIO_CLOUD_*``), then command-line flags.
Every path lives under ``$SILENCIO_HOME`` unless set explicitly."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared_features.labels import taxonomy_path
from shared_features.paths import home

#: The ``silencio -v`` count, passed on to the server (``python -m bentos.server``) and its workers.
VERBOSE_ENV = "SILENCIO_VERBOSE"


class CloudSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SILENCIO_CLOUD_", extra="ignore")

    home: Path = Field(default_factory=home)
    db: Path | None = None  # default: <home>/cloud/cloud.db
    #: the store: unset = SQLite at ``db``; ``postgresql://USER:PASSWORD@HOST:PORT/DB`` for replicas
    #: sharing one database; ``sqlite:///PATH``; ``memory://`` (one process; tests, the demo)
    database_url: str | None = None
    #: PostgreSQL connections per process (each BentoML worker has its own pool)
    db_pool_size: int = Field(default=10, ge=1, le=200)
    #: apply pending store migrations when the service starts (PostgreSQL: under an advisory lock);
    #: false: refuse to start until an operator ran ``silencio cloud migrate``
    migrate_on_start: bool = True
    clip_dir: Path | None = None  # default: <home>/cloud/clips
    #: a model package directory or ``models:/<name>@<alias>``; unset: BirdNET only
    model: str | None = None
    #: the label space (BirdCLEF taxonomy.csv); default: the El Silencio taxonomy shipped with the package
    taxonomy: Path | None = None
    max_upload_mb: float = 50.0
    max_clip_mb: float = 10.0
    max_json_kb: float = 4096.0
    confirm_threshold: float = 0.5
    threads: int = 2
    #: wrong tokens one client address may present per window before it is answered 429 (0: no
    #: limit); counted per process (cloud/ratelimit.py)
    auth_fail_limit: int = Field(default=20, ge=0)
    auth_fail_window_s: float = Field(default=60.0, gt=0)
    #: proxies whose X-Forwarded-For names the client (addresses or networks, comma-separated,
    #: e.g. ``172.16.0.0/12`` for the compose network's nginx); none: the peer is the client
    trusted_proxies: str = ""

    @property
    def db_path(self) -> Path:
        return self.db or self.home / "cloud" / "cloud.db"

    @property
    def clips_path(self) -> Path:
        return self.clip_dir or self.home / "cloud" / "clips"

    @property
    def taxonomy_path(self) -> Path:
        """The label space's taxonomy: the setting (resolved against the working directory) or the
        El Silencio taxonomy shipped with the package."""
        return taxonomy_path(self.taxonomy)
