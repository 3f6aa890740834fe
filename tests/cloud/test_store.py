from __future__ import annotations

import sqlite3

import pytest

from cloud.errors import Unauthorized
from cloud.store import MIGRATIONS, CloudStore, hash_token


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
    assert st.authenticate(token)["name"] == "d1"
    with pytest.raises(Unauthorized):
        st.authenticate(token, "admin")
    with pytest.raises(ValueError, match="exists"):
        st.add_device("d1")
    st.close()
    again = CloudStore(tmp_path / "c.db")  # reopening applies nothing twice
    assert again.migrate() == [] and again.authenticate(token)["name"] == "d1"


def test_foreign_keys_are_enforced(tmp_path):
    st = CloudStore(tmp_path / "c.db")
    with pytest.raises(sqlite3.IntegrityError):
        with st.tx() as db:
            db.execute("INSERT INTO tours VALUES ('t', 999, 'g', NULL, NULL, NULL, 'x', NULL, 'x')")


def test_cli_add_device_and_report(tmp_path, capsys, monkeypatch):
    from silencio.cli import main

    monkeypatch.setenv("SILENCIO_HOME", str(tmp_path))
    assert main(["cloud", "add-device", "field-unit-7"]) == 0
    out = capsys.readouterr().out
    token = out.strip().split()[-1]
    assert CloudStore(tmp_path / "cloud" / "cloud.db").authenticate(token)["name"] == "field-unit-7"
    assert main(["cloud", "add-device", "field-unit-7"]) == 2  # a clear error, not a traceback
    assert "exists" in capsys.readouterr().err
    assert main(["cloud", "report"]) == 0
    assert '"tours": 0' in capsys.readouterr().out
