"""The SQLite plumbing the edge and cloud stores share (they may share only this package): WAL,
foreign keys, a busy timeout, one lock around the connection (thread pools call in), transactions,
and named migrations recorded in a ``migrations`` table, each applied in its own transaction.
Requires ``sqlite-utils`` (the ``edge`` and ``cloud`` extras)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import sqlite_utils


def now() -> str:
    """UTC timestamp, ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class SQLiteStore:
    #: ``(name, SQL script)`` in order; each name is applied once and recorded.
    MIGRATIONS: ClassVar[list[tuple[str, str]]] = []

    def __init__(self, path: Path | str, synchronous: str = "NORMAL") -> None:
        self.path = Path(path) if str(path) != ":memory:" else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self.db = sqlite_utils.Database(conn)
        self.lock = threading.RLock()
        if self.path is not None:
            self.db.enable_wal()
        self.db.execute(f"PRAGMA synchronous = {synchronous}")
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.execute("PRAGMA busy_timeout = 30000")
        self.migrate()

    @contextmanager
    def tx(self) -> Iterator[sqlite_utils.Database]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def migrate(self) -> list[str]:
        """Apply, in order, the migrations whose *name* is not recorded yet (each in its own
        transaction); returns their names. Keyed by name, not position: a migration inserted or
        reordered by mistake cannot be skipped or applied twice."""
        names = [name for name, _ in self.MIGRATIONS]
        if len(set(names)) != len(names):
            raise ValueError(f"{type(self).__name__}: duplicate migration names in {names}")
        with self.lock:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "applied_at TEXT NOT NULL)"
            )
            done = {r[0] for r in self.db.execute("SELECT name FROM migrations").fetchall()}
            applied = []
            for name, sql in self.MIGRATIONS:
                if name in done:
                    continue
                with self.tx() as db:
                    # re-checked under the write lock: another process may have applied it meanwhile
                    if db.execute("SELECT 1 FROM migrations WHERE name = ?", [name]).fetchone():
                        continue
                    for stmt in filter(str.strip, sql.split(";")):
                        db.execute(stmt)
                    db.execute(
                        "INSERT INTO migrations (name, applied_at) VALUES (?, ?)",
                        [name, now()],
                    )
                applied.append(name)
            return applied

    def query(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.db.query(sql, params))

    def integrity(self) -> str:
        return str(self.query("PRAGMA integrity_check")[0]["integrity_check"])

    def close(self) -> None:
        with self.lock:
            self.db.conn.close()
