"""The SQLite store base: named migrations, applied once each, in their own transactions."""

from __future__ import annotations

import pytest

from shared_features.sqlite import SQLiteStore


class _One(SQLiteStore):
    MIGRATIONS = [("create_a", "CREATE TABLE a (x INTEGER)")]


class _Two(SQLiteStore):
    # a second migration appended later, as a release would
    MIGRATIONS = [("create_a", "CREATE TABLE a (x INTEGER)"), ("create_b", "CREATE TABLE b (y INTEGER)")]


class _Broken(SQLiteStore):
    MIGRATIONS = [
        ("create_a", "CREATE TABLE a (x INTEGER)"),
        ("bad", "CREATE TABLE c (z INTEGER); INSERT INTO nowhere VALUES (1)"),
    ]


def test_migrations_are_keyed_by_name_and_applied_once(tmp_path):
    db = tmp_path / "s.db"
    s1 = _One(db)
    assert [r["name"] for r in s1.query("SELECT name FROM migrations")] == ["create_a"]
    s1.close()
    s2 = _Two(db)  # only the new one runs
    assert [r["name"] for r in s2.query("SELECT name FROM migrations ORDER BY id")] == [
        "create_a",
        "create_b",
    ]
    assert s2.migrate() == []
    s2.close()


def test_a_failing_migration_leaves_nothing_half_applied(tmp_path):
    import sqlite3

    with pytest.raises(sqlite3.OperationalError):
        _Broken(tmp_path / "s.db")
    s = _One(tmp_path / "s.db")
    tables = {r["name"] for r in s.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "c" not in tables and "a" in tables
    assert [r["name"] for r in s.query("SELECT name FROM migrations")] == ["create_a"]


def test_duplicate_migration_names_are_refused():
    class Dup(SQLiteStore):
        MIGRATIONS = [("x", "CREATE TABLE a (x INTEGER)"), ("x", "CREATE TABLE b (x INTEGER)")]

    with pytest.raises(ValueError, match="duplicate migration names"):
        Dup(":memory:")


def test_stores_starting_together_apply_each_migration_once(tmp_path):
    """Two stores open a new database at the same moment (as two processes would): both read "not
    applied" before either writes; each migration must still be applied exactly once."""
    import threading
    from contextlib import contextmanager

    barrier = threading.Barrier(2, timeout=30)

    class Racing(_Two):
        first = True

        @contextmanager
        def tx(self):  # type: ignore[no-untyped-def]
            if self.first:  # both have read the applied names; now both try to write
                self.first = False
                barrier.wait()
            with super().tx() as db:
                yield db

    db = tmp_path / "s.db"
    errors: list[BaseException] = []

    def start() -> None:
        try:
            Racing(db).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    s = _Two(db)
    assert [r["name"] for r in s.query("SELECT name FROM migrations ORDER BY id")] == ["create_a", "create_b"]
