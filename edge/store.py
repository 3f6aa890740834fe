"""The device's durable store: SQLite (WAL, foreign keys, ``synchronous=FULL``) with numbered
migrations recorded in a ``migrations`` table.

Rules that make "never lose a detection" hold:

* a detection is committed (its own transaction) **before** anything shows it;
* an event that keeps going is *extended* in place (``end_time``, ``confidence``) and *closed* when
  the species stops calling; only closed detections are synced, and a restart closes the events a
  crash left open;
* a detection is marked synced only after the cloud acknowledged its UUID; nothing deletes an
  unsynced detection — clip files are the only thing ever evicted, oldest already-synced first.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from pathlib import Path
from typing import Any

from shared_features.sqlite import SQLiteStore, now

MIGRATIONS: list[tuple[str, str]] = [
    (
        "initial",
        """
        CREATE TABLE tours (
            uuid TEXT PRIMARY KEY,
            guide TEXT NOT NULL,
            location TEXT,
            latitude REAL,
            longitude REAL,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            synced_at TEXT
        );
        CREATE TABLE detections (
            uuid TEXT PRIMARY KEY,
            tour_uuid TEXT NOT NULL REFERENCES tours(uuid),
            species_code TEXT NOT NULL,
            start_time TEXT NOT NULL,
            end_time TEXT NOT NULL,
            offset_start REAL NOT NULL,
            offset_end REAL NOT NULL,
            confidence REAL NOT NULL,
            band TEXT NOT NULL,
            model_version TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'confirmed', 'disputed')),
            closed INTEGER NOT NULL DEFAULT 0,
            cloud_species TEXT,
            synced_at TEXT,
            sync_error TEXT,
            created_at TEXT NOT NULL
        );
        CREATE INDEX detections_tour ON detections(tour_uuid, start_time);
        CREATE INDEX detections_unsynced ON detections(synced_at, closed);
        CREATE TABLE clips (
            uuid TEXT PRIMARY KEY,
            tour_uuid TEXT REFERENCES tours(uuid),
            detection_uuid TEXT REFERENCES detections(uuid),
            path TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            reason TEXT NOT NULL CHECK (reason IN ('random', 'uncertain', 'flagged')),
            start_offset REAL NOT NULL DEFAULT 0,
            recorded_at TEXT NOT NULL,
            synced_at TEXT,
            evicted_at TEXT,
            sync_error TEXT
        );
        CREATE TABLE feedback (
            uuid TEXT PRIMARY KEY,
            detection_uuid TEXT NOT NULL REFERENCES detections(uuid),
            kind TEXT NOT NULL CHECK (kind IN ('wrong_species', 'not_an_animal', 'confirmed')),
            correct_code TEXT,
            note TEXT,
            created_at TEXT NOT NULL,
            synced_at TEXT
        );
        CREATE TABLE sync_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE models (
            version TEXT PRIMARY KEY,
            path TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            feature_fingerprint TEXT NOT NULL,
            installed_at TEXT NOT NULL,
            shadow_json TEXT,
            active INTEGER NOT NULL DEFAULT 0,
            previous INTEGER NOT NULL DEFAULT 0
        );
        """,
    ),
    (
        "bands_high_medium_low",
        """
        UPDATE detections SET band = CASE band WHEN 'confirmed' THEN 'high' WHEN 'likely' THEN 'medium'
            WHEN 'possible' THEN 'low' ELSE band END
        """,
    ),
]


def new_uuid() -> str:
    return str(uuidlib.uuid4())


class EdgeStore(SQLiteStore):
    MIGRATIONS = MIGRATIONS

    def __init__(self, path: Path | str) -> None:
        super().__init__(path, synchronous="FULL")  # a committed detection survives power loss

    # ------------------------------------------------------------------ tours
    def start_tour(
        self,
        guide: str,
        location: str | None = None,
        latitude: float | None = None,
        longitude: float | None = None,
    ) -> str:
        u = new_uuid()
        with self.tx() as db:
            db.execute(
                "INSERT INTO tours (uuid, guide, location, latitude, longitude, started_at) VALUES (?, ?, "
                "?, ?, ?, ?)",
                [u, guide, location, latitude, longitude, now()],
            )
        return u

    def end_tour(self, tour_uuid: str) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE tours SET ended_at = ?, synced_at = NULL WHERE uuid = ? AND ended_at IS NULL",
                [now(), tour_uuid],
            )

    def tour(self, tour_uuid: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM tours WHERE uuid = ?", [tour_uuid])
        return rows[0] if rows else None

    def tours(self) -> list[dict[str, Any]]:
        return self.query(
            "SELECT t.*, count(d.uuid) AS detections, count(DISTINCT d.species_code) AS species "
            "FROM tours t LEFT JOIN detections d ON d.tour_uuid = t.uuid GROUP BY t.uuid ORDER BY "
            "t.started_at"
        )

    # ------------------------------------------------------------------ detections
    def add_detection(self, d: dict[str, Any]) -> str:
        """Commit a new detection event (before anything shows it); returns its UUID."""
        u = d.get("uuid") or new_uuid()
        with self.tx() as db:
            db.execute(
                "INSERT INTO detections (uuid, tour_uuid, species_code, start_time, end_time, offset_start, "
                "offset_end, confidence, band, model_version, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?, ?)",
                [
                    u,
                    d["tour_uuid"],
                    d["species_code"],
                    d["start_time"],
                    d["end_time"],
                    d["offset_start"],
                    d["offset_end"],
                    d["confidence"],
                    d["band"],
                    d["model_version"],
                    now(),
                ],
            )
        return str(u)

    def extend_detection(
        self, u: str, end_time: str, offset_end: float, confidence: float, band: str
    ) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE detections SET end_time = ?, offset_end = ?, confidence = max(confidence, ?), band "
                "= ? "
                "WHERE uuid = ? AND closed = 0",
                [end_time, offset_end, confidence, band, u],
            )

    def close_detection(self, u: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE detections SET closed = 1 WHERE uuid = ?", [u])

    def close_open_detections(self) -> int:
        """After a crash or a stop: every open event ends where it was last extended."""
        with self.tx() as db:
            cur = db.execute("UPDATE detections SET closed = 1 WHERE closed = 0")
            return int(cur.rowcount)

    def detections(self, tour_uuid: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        where, params = ("WHERE tour_uuid = ?", [tour_uuid]) if tour_uuid else ("", [])
        lim = f" LIMIT {int(limit)}" if limit else ""
        return self.query(f"SELECT * FROM detections {where} ORDER BY start_time DESC{lim}", params)

    def detection(self, u: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM detections WHERE uuid = ?", [u])
        return rows[0] if rows else None

    # ------------------------------------------------------------------ clips
    def add_clip(self, c: dict[str, Any]) -> str:
        u = c.get("uuid") or new_uuid()
        with self.tx() as db:
            db.execute(
                "INSERT INTO clips (uuid, tour_uuid, detection_uuid, path, sha256, bytes, reason, "
                "start_offset, "
                "recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    u,
                    c.get("tour_uuid"),
                    c.get("detection_uuid"),
                    c["path"],
                    c["sha256"],
                    c["bytes"],
                    c["reason"],
                    c.get("start_offset", 0.0),
                    c.get("recorded_at") or now(),
                ],
            )
        return str(u)

    def clip_bytes(self, tour_uuid: str | None = None) -> int:
        where, params = ("AND tour_uuid = ?", [tour_uuid]) if tour_uuid else ("", [])
        return int(
            self.query(
                f"SELECT coalesce(sum(bytes), 0) AS b FROM clips WHERE evicted_at IS NULL {where}", params
            )[0]["b"]
        )

    def evictable_clips(self) -> list[dict[str, Any]]:
        """Clips whose file may go: already synced, oldest first."""
        return self.query(
            "SELECT * FROM clips WHERE evicted_at IS NULL AND synced_at IS NOT NULL ORDER BY recorded_at"
        )

    def mark_evicted(self, u: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE clips SET evicted_at = ? WHERE uuid = ?", [now(), u])

    def flag_clip_of(self, detection_uuid: str) -> int:
        """Raise the detection's clips to 'flagged' (synced first); returns how many."""
        with self.tx() as db:
            cur = db.execute(
                "UPDATE clips SET reason = 'flagged', synced_at = NULL WHERE detection_uuid = ? AND "
                "evicted_at IS NULL",
                [detection_uuid],
            )
            return int(cur.rowcount)

    # ------------------------------------------------------------------ feedback
    def add_feedback(
        self, detection_uuid: str, kind: str, correct_code: str | None = None, note: str | None = None
    ) -> str:
        u = new_uuid()
        with self.tx() as db:
            db.execute(
                "INSERT INTO feedback (uuid, detection_uuid, kind, correct_code, note, created_at) VALUES "
                "(?, ?, ?, ?, ?, ?)",
                [u, detection_uuid, kind, correct_code, note, now()],
            )
            if kind == "confirmed":
                db.execute("UPDATE detections SET status = 'confirmed' WHERE uuid = ?", [detection_uuid])
            else:
                db.execute("UPDATE detections SET status = 'disputed' WHERE uuid = ?", [detection_uuid])
        return u

    # ------------------------------------------------------------------ sync state
    def get_state(self, key: str, default: str | None = None) -> str | None:
        rows = self.query("SELECT value FROM sync_state WHERE key = ?", [key])
        return str(rows[0]["value"]) if rows else default

    def set_state(self, key: str, value: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO sync_state VALUES (?, ?)", [key, value])

    def pending(self) -> dict[str, int]:
        def q(sql: str) -> int:
            return int(self.query(sql)[0]["n"])

        return {
            "detections": q("SELECT count(*) AS n FROM detections WHERE synced_at IS NULL"),
            "clips": q("SELECT count(*) AS n FROM clips WHERE synced_at IS NULL AND evicted_at IS NULL"),
            "feedback": q("SELECT count(*) AS n FROM feedback WHERE synced_at IS NULL"),
            "tours": q("SELECT count(*) AS n FROM tours WHERE synced_at IS NULL"),
        }

    # ------------------------------------------------------------------ models
    def install_model(
        self, version: str, path: str, sha256: str, fingerprint: str, shadow: dict[str, Any] | None
    ) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO models (version, path, sha256, feature_fingerprint, installed_at, "
                "shadow_json, "
                "active, previous) VALUES (?, ?, ?, ?, ?, ?, 0, 0)",
                [version, path, sha256, fingerprint, now(), json.dumps(shadow) if shadow else None],
            )

    def activate_model(self, version: str) -> None:
        """Atomically: the active model becomes the previous one, ``version`` the active one."""
        with self.tx() as db:
            db.execute("UPDATE models SET previous = 0")
            db.execute(
                "UPDATE models SET previous = 1, active = 0 WHERE active = 1 AND version != ?", [version]
            )
            db.execute("UPDATE models SET active = 1 WHERE version = ?", [version])

    def active_model(self) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM models WHERE active = 1")
        return rows[0] if rows else None

    def previous_model(self) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM models WHERE previous = 1")
        return rows[0] if rows else None
