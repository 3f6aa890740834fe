"""``$SILENCIO_HOME``: the one data directory for all state (default: the platform's user data
directory). Every package that stores state asks here."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    env = os.environ.get("SILENCIO_HOME")
    if env:
        p = Path(env).expanduser()
    else:
        from platformdirs import user_data_dir

        p = Path(user_data_dir("silencio", appauthor=False))
    p.mkdir(parents=True, exist_ok=True)
    return p
