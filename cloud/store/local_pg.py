"""A real PostgreSQL 16 server on this machine, from the ``pgserver`` wheel (it ships the server
binaries; no Docker, no network): what the store's tests, the replica test and
``benchmarks/cloud_replicas.py`` run against, and a way to try replicas locally. Production points
``SILENCIO_CLOUD_DATABASE_URL`` at its own server (``deploy/``).

The server listens on a Unix socket only. Run as root (CI), ``pgserver`` runs PostgreSQL as a system
user ``pgserver`` that it creates with ``useradd`` and makes the data directory's parents
traversable for it.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg

from cloud.errors import StoreError

log = logging.getLogger(__name__)


def _pgserver() -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers) and falls back to /tmp
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:
        raise StoreError(
            f"a local PostgreSQL server needs the pgserver package ({exc}): pip install 'silencio[cloud]'"
        ) from None
    return pgserver


class LocalPostgres:
    """``with LocalPostgres(dir) as pg: url = pg.create_database("t1")`` — the server runs until
    :meth:`stop` (or the ``with`` block ends); the data stays in ``dir``."""

    def __init__(self, data_dir: Path | str, *, durable: bool = True) -> None:
        """``durable=False`` (throwaway test data only): no fsync, no synchronous commit."""
        self.data_dir = Path(data_dir)
        self.durable = durable
        self._server: Any = None

    def start(self) -> str:
        """Start (or reuse) the server; returns the URL of its ``postgres`` database."""
        if self._server is None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                self._server = _pgserver().get_server(self.data_dir, cleanup_mode="stop")
            except Exception as exc:  # noqa: BLE001 - pgserver raises plain exceptions; say where
                log_file = self.data_dir / "log"
                tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
                raise StoreError(f"could not start PostgreSQL in {self.data_dir}: {exc}\n{tail}") from exc
            if not self.durable:
                with psycopg.connect(self._server.get_uri(), autocommit=True) as conn:
                    for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                        conn.execute(f"ALTER SYSTEM SET {setting} = off")
                    conn.execute("SELECT pg_reload_conf()")
        return str(self._server.get_uri())

    @property
    def url(self) -> str:
        return self.start()

    @property
    def bin_dir(self) -> Path:
        """The PostgreSQL client and server programs the wheel ships (``psql``, ``pg_dump``, …)."""
        return Path(_pgserver().__file__).parent / "pginstall" / "bin"

    def database_url(self, name: str) -> str:
        self.start()
        return str(self._server.get_uri(database=name))

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"database name {name!r}: lower-case letters, digits and _ only")
        with psycopg.connect(self.start(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.database_url(name)

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
