"""Console settings: defaults, then environment (``SILENCIO_CONSOLE_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SILENCIO_CONSOLE_", extra="ignore")

    #: how long a login lasts (the session cookie's Max-Age and the stored expiry)
    session_ttl_s: int = Field(default=8 * 3600, ge=60, le=30 * 24 * 3600)
    #: ``Secure`` session cookies: ``auto`` = when the request came over https (also through one of
    #: the service's trusted proxies that says so in ``X-Forwarded-Proto``)
    secure_cookies: Literal["auto", "always", "never"] = "auto"
    #: failed logins from one client within ``login_window_s`` before it is refused (429) until the
    #: oldest of them leaves the window
    login_max_failures: int = Field(default=5, ge=1)
    login_window_s: float = Field(default=300.0, gt=0)
    #: clips per review-queue page (the current clip and the ones after it)
    queue_page: int = Field(default=12, ge=1, le=200)
    #: how long the overview's aggregates (also behind the species index) are reused, per process
    #: (s); 0: computed for every request. They scan every judged detection, and every reviewer
    #: lands on the overview.
    overview_cache_s: float = Field(default=10.0, ge=0)
    #: longest audio rendered as a spectrogram (s); a longer clip shows its beginning
    spectrogram_max_s: float = Field(default=30.0, gt=0)
