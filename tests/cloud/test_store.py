"""What is particular to the SQLite store (WAL, foreign keys, token hashes on disk), the clip files,
and the operators' commands: ``silencio cloud migrate | add-device | revoke-device | devices``
(also as ``python -m cloud``). Every store operation is pinned by ``test_store_contract.py``."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading

import pytest

from cloud.errors import StoreError, Unauthorized
from cloud.store import MIGRATION_NAMES, MIGRATIONS, ClipFiles, CloudStore, hash_token
from tests.conftest import REPO


def test_migrations_wal_foreign_keys_and_token_hashes(tmp_path):
    st = CloudStore(tmp_path / "c.db")
    token = st.add_device("d1")
    assert st.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
    assert st.query("PRAGMA foreign_keys")[0]["foreign_keys"] == 1
    assert [r["name"] for r in st.query("SELECT name FROM migrations")] == [m[0] for m in MIGRATIONS]
    raw = (tmp_path / "c.db").read_bytes() + (tmp_path / "c.db-wal").read_bytes()
    assert token.encode() not in raw and st.query("SELECT token_hash FROM devices")[0][
        "token_hash"
    ] == hash_token(token)
    assert st.authenticate(token).name == "d1"
    with pytest.raises(Unauthorized):
        st.authenticate(token, "admin")
    with pytest.raises(ValueError, match="exists"):
        st.add_device("d1")
    st.close()
    again = CloudStore(tmp_path / "c.db")  # reopening applies nothing twice
    assert again.migrate() == [] and again.authenticate(token).name == "d1"


def test_foreign_keys_are_enforced(tmp_path):
    st = CloudStore(tmp_path / "c.db")
    with pytest.raises(sqlite3.IntegrityError):
        with st.tx() as db:
            db.execute("INSERT INTO tours VALUES ('t', 999, 'g', NULL, NULL, NULL, 'x', NULL, 'x')")


def test_clip_files_concurrent_writers_and_a_full_disk(tmp_path):
    files = ClipFiles(tmp_path / "clips")
    data = os.urandom(200_000)
    sha = "ab" * 32
    paths: list = []
    threads = [threading.Thread(target=lambda: paths.append(files.put(data, sha, "ogg"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 1 and paths[0].read_bytes() == data
    assert [p.name for p in paths[0].parent.iterdir()] == [f"{sha}.ogg"]  # no temporary file left
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the clip directory should be")
    with pytest.raises(StoreError, match="cannot store clip"):
        ClipFiles(blocked).put(data, sha, "ogg")


def test_cli_add_device_and_report(tmp_path, capsys, monkeypatch):
    from silencio.cli import main

    monkeypatch.setenv("SILENCIO_HOME", str(tmp_path))
    assert main(["cloud", "add-device", "field-unit-7"]) == 0
    out = capsys.readouterr().out
    token = out.strip().split()[-1]
    assert CloudStore(tmp_path / "cloud" / "cloud.db").authenticate(token).name == "field-unit-7"
    assert main(["cloud", "add-device", "field-unit-7"]) == 2  # a clear error, not a traceback
    assert "exists" in capsys.readouterr().err
    assert main(["cloud", "report"]) == 0
    assert '"tours": 0' in capsys.readouterr().out


def test_cli_revoke_and_list_devices(tmp_path, capsys, monkeypatch):
    from silencio.cli import main

    monkeypatch.setenv("SILENCIO_HOME", str(tmp_path))
    assert main(["cloud", "devices"]) == 0 and "no devices yet" in capsys.readouterr().out
    main(["cloud", "add-device", "unit-1"])
    token = capsys.readouterr().out.strip().split()[-1]
    assert main(["cloud", "revoke-device", "unit-1"]) == 0
    assert "revoked" in capsys.readouterr().out
    with pytest.raises(Unauthorized, match="revoked"):
        CloudStore(tmp_path / "cloud" / "cloud.db").authenticate(token)
    assert main(["cloud", "devices"]) == 0
    assert "unit-1" in (out := capsys.readouterr().out) and "revoked" in out and "never synced" in out
    assert main(["cloud", "revoke-device", "nobody"]) == 2
    assert "no device named 'nobody'" in capsys.readouterr().err


def test_cli_migrate_sqlite_and_postgresql(tmp_path, capsys, monkeypatch, postgres):
    from silencio.cli import main

    monkeypatch.setenv("SILENCIO_HOME", str(tmp_path))
    db = tmp_path / "fresh.db"
    assert main(["cloud", "migrate", "--db", str(db), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{len(MIGRATION_NAMES)} pending" in out and all(n in out for n in MIGRATION_NAMES)
    assert main(["cloud", "migrate", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert f"applied {len(MIGRATION_NAMES)} migration(s)" in out and all(n in out for n in MIGRATION_NAMES)
    assert main(["cloud", "migrate", "--db", str(db)]) == 0
    assert "up to date" in capsys.readouterr().out
    url = postgres.create_database("cli_migrate")
    monkeypatch.setenv("SILENCIO_CLOUD_DATABASE_URL", url)
    assert main(["cloud", "migrate"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("postgresql://postgres@") and all(n in out for n in MIGRATION_NAMES)
    # the container image has no `silencio` command: the same command as `python -m cloud`
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "cloud", "migrate"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "up to date" in proc.stdout, proc.stderr
    env["SILENCIO_CLOUD_DATABASE_URL"] = "mysql://nope"
    proc = subprocess.run(
        [sys.executable, "-m", "cloud", "migrate"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "unsupported database URL scheme 'mysql'" in proc.stderr
