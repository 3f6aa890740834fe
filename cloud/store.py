"""The cloud store: SQLite (WAL, foreign keys) through sqlite-utils, with numbered migrations
recorded in a ``migrations`` table and run in transactions. Clip files are content-addressed on
disk (``clips/<sha256[:2]>/<sha256>.<ext>``); the database keeps their metadata.

Tables: ``devices`` (token hashes only), ``tours``, ``detections``, ``clips``, ``confirmations``
(``seq`` is the cursor devices fetch from), ``feedback`` (the relabelling queue), ``releases``.
Every client-generated UUID is a primary key: re-sending is harmless.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

from cloud.errors import Unauthorized
from shared_features.sqlite import SQLiteStore, now

MIGRATIONS: list[tuple[str, str]] = [
    (
        "initial",
        """
        CREATE TABLE devices (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL CHECK (role IN ('device', 'admin')),
            token_hash TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL
        );
        CREATE TABLE tours (
            uuid TEXT PRIMARY KEY,
            device_id INTEGER NOT NULL REFERENCES devices(id),
            guide TEXT NOT NULL,
            location TEXT,
            latitude REAL,
            longitude REAL,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            received_at TEXT NOT NULL
        );
        CREATE TABLE detections (
            uuid TEXT PRIMARY KEY,
            device_id INTEGER NOT NULL REFERENCES devices(id),
            tour_uuid TEXT NOT NULL REFERENCES tours(uuid),
            species_code TEXT NOT NULL,
            start_time TEXT NOT NULL,
            end_time TEXT NOT NULL,
            confidence REAL NOT NULL,
            band TEXT NOT NULL,
            model_version TEXT NOT NULL,
            received_at TEXT NOT NULL
        );
        CREATE INDEX detections_tour ON detections(tour_uuid);
        CREATE TABLE clips (
            uuid TEXT PRIMARY KEY,
            device_id INTEGER NOT NULL REFERENCES devices(id),
            tour_uuid TEXT,
            detection_uuid TEXT,
            sha256 TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            reason TEXT NOT NULL,
            recorded_at TEXT NOT NULL,
            start_offset REAL NOT NULL DEFAULT 0,
            path TEXT NOT NULL,
            received_at TEXT NOT NULL
        );
        CREATE TABLE confirmations (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            clip_uuid TEXT NOT NULL UNIQUE REFERENCES clips(uuid),
            device_id INTEGER NOT NULL REFERENCES devices(id),
            detection_uuid TEXT,
            edge_species TEXT,
            agree INTEGER,
            species_json TEXT NOT NULL,
            model TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX confirmations_device ON confirmations(device_id, seq);
        CREATE TABLE feedback (
            uuid TEXT PRIMARY KEY,
            device_id INTEGER NOT NULL REFERENCES devices(id),
            detection_uuid TEXT NOT NULL,
            kind TEXT NOT NULL,
            correct_code TEXT,
            note TEXT,
            created_at TEXT NOT NULL,
            received_at TEXT NOT NULL,
            exported_at TEXT
        );
        CREATE TABLE releases (
            version TEXT PRIMARY KEY,
            sha256 TEXT NOT NULL,
            feature_fingerprint TEXT NOT NULL,
            path TEXT NOT NULL,
            manifest_json TEXT NOT NULL,
            created_at TEXT NOT NULL,
            current INTEGER NOT NULL DEFAULT 0
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


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class CloudStore(SQLiteStore):
    """One SQLite database plus the clip directory. Thread-safe (one lock around the connection:
    BentoML runs handlers in a thread pool)."""

    MIGRATIONS = MIGRATIONS

    def __init__(self, path: Path | str, clip_dir: Path | str | None = None) -> None:
        super().__init__(path)
        base = self.path.parent if self.path is not None else Path(".")
        self.clip_dir = Path(clip_dir) if clip_dir is not None else base / "clips"

    # ------------------------------------------------------------------ devices
    def add_device(self, name: str, role: str = "device") -> str:
        """Create a device (or admin) and return its token; only the token's hash is stored."""
        token = secrets.token_urlsafe(32)
        with self.tx() as db:
            if db.execute("SELECT 1 FROM devices WHERE name = ?", [name]).fetchone():
                raise ValueError(f"a device named {name!r} exists already")
            db.execute(
                "INSERT INTO devices (name, role, token_hash, created_at) VALUES (?, ?, ?, ?)",
                [name, role, hash_token(token), now()],
            )
        return token

    def authenticate(self, token: str | None, role: str = "device") -> dict[str, Any]:
        """The device (or admin) a bearer token belongs to; admins may act as devices too."""
        if not token:
            raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
        rows = self.query("SELECT * FROM devices WHERE token_hash = ?", [hash_token(token)])
        if not rows or (role == "admin" and rows[0]["role"] != "admin"):
            raise Unauthorized(f"invalid {role} token")
        return rows[0]

    # ------------------------------------------------------------------ sync
    def upsert_tour(self, device_id: int, t: dict[str, Any]) -> str:
        """'accepted', 'duplicate' (same device; its end time is updated) or an error message."""
        with self.tx() as db:
            row = db.execute("SELECT device_id FROM tours WHERE uuid = ?", [t["uuid"]]).fetchone()
            if row is not None:
                if row[0] != device_id:
                    return "tour belongs to another device"
                if t.get("ended_at"):
                    db.execute("UPDATE tours SET ended_at = ? WHERE uuid = ?", [t["ended_at"], t["uuid"]])
                return "duplicate"
            db.execute(
                "INSERT INTO tours VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    t["uuid"],
                    device_id,
                    t["guide"],
                    t.get("location"),
                    t.get("latitude"),
                    t.get("longitude"),
                    t["started_at"],
                    t.get("ended_at"),
                    now(),
                ],
            )
            return "accepted"

    def insert_detection(self, device_id: int, d: dict[str, Any]) -> str:
        with self.tx() as db:
            if db.execute("SELECT 1 FROM detections WHERE uuid = ?", [d["uuid"]]).fetchone():
                return "duplicate"
            tour = db.execute("SELECT device_id FROM tours WHERE uuid = ?", [d["tour_uuid"]]).fetchone()
            if tour is None:
                return f"unknown tour {d['tour_uuid']} (send the tour first)"
            if tour[0] != device_id:
                return "tour belongs to another device"
            db.execute(
                "INSERT INTO detections VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    d["uuid"],
                    device_id,
                    d["tour_uuid"],
                    d["species_code"],
                    d["start_time"],
                    d["end_time"],
                    d["confidence"],
                    d["band"],
                    d["model_version"],
                    now(),
                ],
            )
            return "accepted"

    # ------------------------------------------------------------------ clips
    def clip_path(self, sha256: str, ext: str) -> Path:
        return self.clip_dir / sha256[:2] / f"{sha256}.{ext}"

    def get_clip(self, uuid: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM clips WHERE uuid = ?", [uuid])
        return rows[0] if rows else None

    def insert_clip(self, device_id: int, meta: dict[str, Any], path: Path) -> bool:
        """False when the clip UUID was stored before."""
        with self.tx() as db:
            if db.execute("SELECT 1 FROM clips WHERE uuid = ?", [meta["uuid"]]).fetchone():
                return False
            db.execute(
                "INSERT INTO clips VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    meta["uuid"],
                    device_id,
                    meta.get("tour_uuid"),
                    meta.get("detection_uuid"),
                    meta["sha256"],
                    meta["bytes"],
                    meta["reason"],
                    meta["recorded_at"],
                    meta.get("start_offset", 0.0),
                    str(path),
                    now(),
                ],
            )
            return True

    def detection(self, uuid: str | None) -> dict[str, Any] | None:
        if uuid is None:
            return None
        rows = self.query("SELECT * FROM detections WHERE uuid = ?", [uuid])
        return rows[0] if rows else None

    def add_confirmation(
        self,
        clip_uuid: str,
        device_id: int,
        detection_uuid: str | None,
        edge_species: str | None,
        agree: bool | None,
        species: list[dict[str, Any]],
        model: str,
    ) -> dict[str, Any]:
        with self.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO confirmations (clip_uuid, device_id, detection_uuid, edge_species, "
                "agree, species_json, model, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    clip_uuid,
                    device_id,
                    detection_uuid,
                    edge_species,
                    None if agree is None else int(agree),
                    json.dumps(species),
                    model,
                    now(),
                ],
            )
        return self.confirmation_for_clip(clip_uuid)  # type: ignore[return-value]

    @staticmethod
    def _confirmation(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "seq": row["seq"],
            "clip_uuid": row["clip_uuid"],
            "detection_uuid": row["detection_uuid"],
            "edge_species": row["edge_species"],
            "agree": None if row["agree"] is None else bool(row["agree"]),
            "species": json.loads(row["species_json"]),
            "model": row["model"],
            "created_at": row["created_at"],
        }

    def confirmation_for_clip(self, clip_uuid: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM confirmations WHERE clip_uuid = ?", [clip_uuid])
        return self._confirmation(rows[0]) if rows else None

    def confirmations_since(self, device_id: int, since: int, limit: int = 200) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT * FROM confirmations WHERE device_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            [device_id, since, limit],
        )
        return [self._confirmation(r) for r in rows]

    # ------------------------------------------------------------------ feedback
    def insert_feedback(self, device_id: int, f: dict[str, Any]) -> bool:
        with self.tx() as db:
            if db.execute("SELECT 1 FROM feedback WHERE uuid = ?", [f["uuid"]]).fetchone():
                return False
            db.execute(
                "INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                [
                    f["uuid"],
                    device_id,
                    f["detection_uuid"],
                    f["kind"],
                    f.get("correct_code"),
                    f.get("note"),
                    f["created_at"],
                    now(),
                ],
            )
            return True

    def relabel_queue(self, include_exported: bool = False) -> list[dict[str, Any]]:
        """Feedback with the detection and its clips: what the training side exports as labels."""
        where = "" if include_exported else "WHERE f.exported_at IS NULL"
        return self.query(
            "SELECT f.*, d.species_code AS edge_species, d.start_time, d.end_time, d.tour_uuid, "
            "c.uuid AS clip_uuid, c.path AS clip_path, c.start_offset "
            "FROM feedback f LEFT JOIN detections d ON d.uuid = f.detection_uuid "
            f"LEFT JOIN clips c ON c.detection_uuid = f.detection_uuid {where} ORDER BY f.received_at"
        )

    def mark_exported(self, uuids: list[str]) -> None:
        with self.tx() as db:
            for u in uuids:
                db.execute("UPDATE feedback SET exported_at = ? WHERE uuid = ?", [now(), u])

    # ------------------------------------------------------------------ releases
    def add_release(
        self, version: str, sha256: str, fingerprint: str, path: str, manifest: dict[str, Any]
    ) -> None:
        with self.tx() as db:
            db.execute("UPDATE releases SET current = 0")
            db.execute(
                "INSERT OR REPLACE INTO releases VALUES (?, ?, ?, ?, ?, ?, 1)",
                [version, sha256, fingerprint, path, json.dumps(manifest), now()],
            )

    def current_release(self) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM releases WHERE current = 1")
        return rows[0] if rows else None

    # ------------------------------------------------------------------ counts
    def counts(self) -> dict[str, int]:
        out = {}
        for t in ("devices", "tours", "detections", "clips", "confirmations", "feedback", "releases"):
            out[t] = int(self.query(f"SELECT count(*) AS n FROM {t}")[0]["n"])
        return out
