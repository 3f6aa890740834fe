"""The cloud store on SQLite, the embedded default (one node): WAL, foreign keys, a busy timeout
and one lock around the connection (:class:`shared_features.sqlite.SQLiteStore`); every write is a
``BEGIN IMMEDIATE`` transaction, so SQLite's single writer makes each operation atomic, also across
processes sharing the file. Timestamps are stored as ISO 8601 text in UTC.

Tables: ``devices`` (token hashes only, revocation, last sync and status), ``tours``,
``detections``, ``clips`` (metadata; the audio is in :class:`cloud.store.files.ClipFiles`),
``confirmations`` (``seq`` is the cursor devices fetch from), ``feedback`` (the relabelling queue),
``releases``, and ``migrations`` (applied names).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from cloud.errors import DeviceExists, NotFound, Unauthorized
from cloud.schemas import ClipMeta, DetectionIn, DeviceStatus, FeedbackIn, TourIn
from cloud.store import rows
from cloud.store.interface import (
    COUNTED,
    MIGRATION_NAMES,
    ClipRecord,
    ClipResult,
    ConfirmationRecord,
    ConfirmationStats,
    DetectionRecord,
    DeviceRecord,
    FeedbackResult,
    Ingested,
    IngestReport,
    IngestResult,
    NewConfirmation,
    RelabelItem,
    ReleaseRecord,
    ReleaseSignature,
    Role,
    Summary,
    TourReport,
    as_utc,
    check_role,
    hash_token,
    refused,
    summarize,
    utcnow,
)
from cloud.store.rows import norm_uuid
from shared_features.sqlite import SQLiteStore

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
    (
        "device_status_clip_source",
        """
        ALTER TABLE devices ADD COLUMN revoked_at TEXT;
        ALTER TABLE devices ADD COLUMN last_sync_at TEXT;
        ALTER TABLE devices ADD COLUMN status_json TEXT;
        ALTER TABLE clips ADD COLUMN source TEXT;
        ALTER TABLE clips ADD COLUMN source_offset REAL;
        ALTER TABLE clips ADD COLUMN edge_top_json TEXT NOT NULL DEFAULT '[]';
        CREATE INDEX clips_detection ON clips(detection_uuid);
        CREATE INDEX clips_tour ON clips(tour_uuid);
        CREATE INDEX confirmations_detection ON confirmations(detection_uuid);
        CREATE INDEX feedback_detection ON feedback(detection_uuid)
        """,
    ),
    (
        "release_signatures",
        """
        ALTER TABLE releases ADD COLUMN signature TEXT;
        ALTER TABLE releases ADD COLUMN key_id TEXT;
        ALTER TABLE releases ADD COLUMN statement_json TEXT;
        ALTER TABLE releases ADD COLUMN key_rotations_json TEXT
        """,
    ),
]
assert tuple(n for n, _ in MIGRATIONS) == MIGRATION_NAMES

_RELABEL = """
    SELECT f.uuid AS feedback_uuid, f.device_id, f.detection_uuid, f.kind, f.correct_code, f.note,
        f.created_at, f.received_at, f.exported_at, d.species_code AS edge_species, d.tour_uuid,
        c.uuid AS clip_uuid, c.path AS clip_path, c.start_offset
    FROM feedback f LEFT JOIN detections d ON d.uuid = f.detection_uuid
    LEFT JOIN clips c ON c.detection_uuid = f.detection_uuid
    WHERE ? OR f.exported_at IS NULL
    ORDER BY f.received_at, f.uuid, c.received_at, c.uuid
"""

_SPECIES = """
    SELECT d.tour_uuid, d.species_code AS code, count(DISTINCT d.uuid) AS detections,
        min(d.start_time) AS first_heard,
        max(CASE WHEN c.agree = 1 THEN 1 ELSE 0 END) AS cloud_agree,
        max(CASE WHEN f.kind = 'confirmed' THEN 1 ELSE 0 END) AS guide_ok,
        max(CASE WHEN f.kind IN ('wrong_species', 'not_an_animal') THEN 1 ELSE 0 END) AS flagged
    FROM detections d LEFT JOIN confirmations c ON c.detection_uuid = d.uuid
    LEFT JOIN feedback f ON f.detection_uuid = d.uuid
    WHERE ? IS NULL OR d.tour_uuid = ?
    GROUP BY d.tour_uuid, d.species_code
"""


def _ts(dt: datetime | None) -> str | None:
    """UTC ISO 8601 with microseconds: lexical order is time order."""
    return None if dt is None else as_utc(dt).isoformat(timespec="microseconds")


class SQLiteCloudStore(SQLiteStore):
    """Implements :class:`cloud.store.Store` on one SQLite file (or ``:memory:``)."""

    backend = "sqlite"
    MIGRATIONS = MIGRATIONS

    def __init__(self, path: Path | str, *, migrate: bool = True) -> None:
        self._defer_migrations = not migrate
        super().__init__(path)  # runs self.migrate() unless deferred

    @contextmanager
    def _read(self) -> Iterator[None]:
        """One read transaction: the queries inside see one snapshot of the database."""
        with self.lock:
            nested = self.db.conn.in_transaction
            if not nested:
                self.db.execute("BEGIN")
            try:
                yield
            finally:
                if not nested:
                    self.db.execute("COMMIT")

    def describe(self) -> str:
        return str(self.path) if self.path is not None else ":memory:"

    # ---------------------------------------------------------------- migrations
    def migrate(self) -> list[str]:
        """Like the base class, but each migration re-checks its name inside its own
        ``BEGIN IMMEDIATE`` transaction: processes starting together on one fresh file apply each
        migration exactly once (the others wait for the write lock, then see it recorded)."""
        if self._defer_migrations:
            self._defer_migrations = False
            return []
        names = [name for name, _ in self.MIGRATIONS]
        if len(set(names)) != len(names):
            raise ValueError(f"{type(self).__name__}: duplicate migration names in {names}")
        applied = []
        with self.lock:
            with self.tx() as db:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                    "applied_at TEXT NOT NULL)"
                )
            for name, sql in self.MIGRATIONS:
                with self.tx() as db:
                    if db.execute("SELECT 1 FROM migrations WHERE name = ?", [name]).fetchone():
                        continue
                    for stmt in filter(str.strip, sql.split(";")):
                        db.execute(stmt)
                    db.execute(
                        "INSERT INTO migrations (name, applied_at) VALUES (?, ?)", [name, _ts(utcnow())]
                    )
                applied.append(name)
        return applied

    def applied_migrations(self) -> list[str]:
        if not self.query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'migrations'"):
            return []
        return [r["name"] for r in self.query("SELECT name FROM migrations ORDER BY id")]

    def pending_migrations(self) -> list[str]:
        done = set(self.applied_migrations())
        return [n for n, _ in self.MIGRATIONS if n not in done]

    # ---------------------------------------------------------------- devices
    def add_device(self, name: str, role: Role | str = Role.DEVICE) -> str:
        r = check_role(role)
        token = secrets.token_urlsafe(32)
        with self.tx() as db:
            if db.execute("SELECT 1 FROM devices WHERE name = ?", [name]).fetchone():
                raise DeviceExists(f"a device named {name!r} exists already")
            db.table("devices").insert(
                {"name": name, "role": str(r), "token_hash": hash_token(token), "created_at": _ts(utcnow())}
            )
        return token

    def authenticate(self, token: str | None, role: Role | str = Role.DEVICE) -> DeviceRecord:
        want = check_role(role)
        if not token:
            raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
        found = self.query("SELECT * FROM devices WHERE token_hash = ?", [hash_token(token)])
        if not found or (want is Role.ADMIN and found[0]["role"] != Role.ADMIN):
            raise Unauthorized(f"invalid {want} token")
        dev = rows.device(found[0])
        if dev.revoked:
            raise Unauthorized(f"{dev.role} {dev.name!r} was revoked")
        return dev

    def revoke_device(self, name: str) -> DeviceRecord:
        with self.tx() as db:
            db.execute(
                "UPDATE devices SET revoked_at = coalesce(revoked_at, ?) WHERE name = ?",
                [_ts(utcnow()), name],
            )
            found = list(db.query("SELECT * FROM devices WHERE name = ?", [name]))
        if not found:
            raise NotFound(f"no device named {name!r}")
        return rows.device(found[0])

    def devices(self) -> list[DeviceRecord]:
        return [rows.device(r) for r in self.query("SELECT * FROM devices ORDER BY name")]

    # ---------------------------------------------------------------- sync
    def ingest(
        self,
        device_id: int,
        tours: Sequence[TourIn],
        detections: Sequence[DetectionIn],
        status: DeviceStatus | None = None,
    ) -> IngestReport:
        now = _ts(utcnow())
        out_t: list[Ingested] = []
        out_d: list[Ingested] = []
        with self.tx() as db:
            for t in tours:
                uid = str(t.uuid)
                row = db.execute("SELECT device_id FROM tours WHERE uuid = ?", [uid]).fetchone()
                if row is None:
                    db.table("tours").insert(
                        {
                            "uuid": uid,
                            "device_id": device_id,
                            "guide": t.guide,
                            "location": t.location,
                            "latitude": t.latitude,
                            "longitude": t.longitude,
                            "started_at": _ts(t.started_at),
                            "ended_at": _ts(t.ended_at),
                            "received_at": now,
                        }
                    )
                    out_t.append(Ingested(uid, IngestResult.ACCEPTED))
                elif row[0] != device_id:
                    out_t.append(refused(uid, IngestResult.NOT_OWNER, uid))
                else:
                    if t.ended_at is not None:
                        db.execute("UPDATE tours SET ended_at = ? WHERE uuid = ?", [_ts(t.ended_at), uid])
                    out_t.append(Ingested(uid, IngestResult.DUPLICATE))
            new: list[dict[str, Any]] = []
            for d in detections:
                uid, tour_uuid = str(d.uuid), str(d.tour_uuid)
                had = db.execute("SELECT device_id FROM detections WHERE uuid = ?", [uid]).fetchone()
                if had is None and any(r["uuid"] == uid for r in new):
                    had = (device_id,)
                tour = db.execute("SELECT device_id FROM tours WHERE uuid = ?", [tour_uuid]).fetchone()
                if had is not None:
                    out_d.append(
                        Ingested(uid, IngestResult.DUPLICATE)
                        if had[0] == device_id
                        else refused(uid, IngestResult.NOT_OWNER)
                    )
                elif tour is None:
                    out_d.append(refused(uid, IngestResult.UNKNOWN_TOUR, tour_uuid))
                elif tour[0] != device_id:
                    out_d.append(refused(uid, IngestResult.NOT_OWNER, tour_uuid))
                else:
                    new.append(
                        {
                            "uuid": uid,
                            "device_id": device_id,
                            "tour_uuid": tour_uuid,
                            "species_code": d.species_code,
                            "start_time": _ts(d.start_time),
                            "end_time": _ts(d.end_time),
                            "confidence": d.confidence,
                            "band": d.band,
                            "model_version": d.model_version,
                            "received_at": now,
                        }
                    )
                    out_d.append(Ingested(uid, IngestResult.ACCEPTED))
            if new:
                db.table("detections").insert_all(new)
            db.execute(
                "UPDATE devices SET last_sync_at = ?, status_json = coalesce(?, status_json) WHERE id = ?",
                [now, None if status is None else status.model_dump_json(), device_id],
            )
        return IngestReport(out_t, out_d)

    def detection(self, device_id: int, uuid: str) -> DetectionRecord | None:
        found = self.query(
            "SELECT * FROM detections WHERE uuid = ? AND device_id = ?", [norm_uuid(uuid), device_id]
        )
        return rows.detection(found[0]) if found else None

    # ---------------------------------------------------------------- clips
    def add_clip(self, device_id: int, meta: ClipMeta, path: str) -> ClipResult:
        uid = str(meta.uuid)
        with self.tx() as db:
            for table, key in (("tours", meta.tour_uuid), ("detections", meta.detection_uuid)):
                if key is None:
                    continue
                owner = db.execute(f"SELECT device_id FROM {table} WHERE uuid = ?", [str(key)]).fetchone()
                if owner is not None and owner[0] != device_id:
                    return ClipResult.NOT_OWNER
            had = db.execute("SELECT device_id FROM clips WHERE uuid = ?", [uid]).fetchone()
            if had is not None:
                return ClipResult.DUPLICATE if had[0] == device_id else ClipResult.NOT_OWNER
            db.table("clips").insert(
                {
                    "uuid": uid,
                    "device_id": device_id,
                    "tour_uuid": None if meta.tour_uuid is None else str(meta.tour_uuid),
                    "detection_uuid": None if meta.detection_uuid is None else str(meta.detection_uuid),
                    "sha256": meta.sha256,
                    "bytes": meta.bytes,
                    "reason": meta.reason,
                    "recorded_at": _ts(meta.recorded_at),
                    "start_offset": meta.start_offset,
                    "path": path,
                    "received_at": _ts(utcnow()),
                    "source": meta.source,
                    "source_offset": meta.source_offset,
                    "edge_top_json": json.dumps([e.model_dump() for e in meta.edge_top]),
                }
            )
        return ClipResult.ACCEPTED

    def clip(self, uuid: str) -> ClipRecord | None:
        found = self.query("SELECT * FROM clips WHERE uuid = ?", [norm_uuid(uuid)])
        return rows.clip(found[0]) if found else None

    def clips(self, *, tour_uuid: str | None = None, limit: int = 200) -> list[ClipRecord]:
        tour = None if tour_uuid is None else norm_uuid(tour_uuid) or ""
        found = self.query(
            "SELECT * FROM clips WHERE ? IS NULL OR tour_uuid = ? "
            "ORDER BY received_at DESC, uuid DESC LIMIT ?",
            [tour, tour, limit],
        )
        return [rows.clip(r) for r in found]

    # ---------------------------------------------------------------- confirmations
    def confirm(self, new: NewConfirmation) -> ConfirmationRecord:
        try:
            with self.tx() as db:
                db.execute(
                    "INSERT OR IGNORE INTO confirmations (clip_uuid, device_id, detection_uuid, "
                    "edge_species, agree, species_json, model, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        new.clip_uuid,
                        new.device_id,
                        new.detection_uuid,
                        new.edge_species,
                        None if new.agree is None else int(new.agree),
                        json.dumps(new.species),
                        new.model,
                        _ts(utcnow()),
                    ],
                )
        except sqlite3.IntegrityError as exc:
            raise NotFound(f"clip {new.clip_uuid} is not stored ({exc})") from None
        rec = self.confirmation(new.clip_uuid)
        assert rec is not None
        return rec

    def confirmation(self, clip_uuid: str) -> ConfirmationRecord | None:
        found = self.query("SELECT * FROM confirmations WHERE clip_uuid = ?", [norm_uuid(clip_uuid)])
        return rows.confirmation(found[0]) if found else None

    def confirmations_since(self, device_id: int, since: int, limit: int = 200) -> list[ConfirmationRecord]:
        found = self.query(
            "SELECT * FROM confirmations WHERE device_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            [device_id, since, limit],
        )
        return [rows.confirmation(r) for r in found]

    # ---------------------------------------------------------------- feedback
    def feedback(self, device_id: int, fb: FeedbackIn) -> FeedbackResult:
        uid = str(fb.uuid)
        with self.tx() as db:
            det = db.execute(
                "SELECT device_id FROM detections WHERE uuid = ?", [str(fb.detection_uuid)]
            ).fetchone()
            if det is None:
                return FeedbackResult.UNKNOWN_DETECTION
            if det[0] != device_id:
                return FeedbackResult.NOT_OWNER
            had = db.execute("SELECT device_id FROM feedback WHERE uuid = ?", [uid]).fetchone()
            if had is not None:
                return FeedbackResult.DUPLICATE if had[0] == device_id else FeedbackResult.NOT_OWNER
            db.table("feedback").insert(
                {
                    "uuid": uid,
                    "device_id": device_id,
                    "detection_uuid": str(fb.detection_uuid),
                    "kind": fb.kind,
                    "correct_code": fb.correct_code,
                    "note": fb.note,
                    "created_at": _ts(fb.created_at),
                    "received_at": _ts(utcnow()),
                    "exported_at": None,
                }
            )
        return FeedbackResult.ACCEPTED

    def relabel_queue(self, include_exported: bool = False) -> list[RelabelItem]:
        return [rows.relabel(r) for r in self.query(_RELABEL, [int(include_exported)])]

    def mark_exported(self, feedback_uuids: Sequence[str]) -> int:
        n = 0
        now = _ts(utcnow())
        with self.tx() as db:
            for u in {norm_uuid(u) for u in feedback_uuids} - {None}:
                n += db.execute("UPDATE feedback SET exported_at = ? WHERE uuid = ?", [now, u]).rowcount
        return n

    # ---------------------------------------------------------------- reports
    def tour_report(self, tour_uuid: str | None = None) -> list[TourReport]:
        tour = None if tour_uuid is None else norm_uuid(tour_uuid) or ""
        with self._read():
            tours = self.query(
                "SELECT t.*, d.name AS device FROM tours t JOIN devices d ON d.id = t.device_id "
                "WHERE ? IS NULL OR t.uuid = ? ORDER BY t.started_at, t.uuid",
                [tour, tour],
            )
            species = self.query(_SPECIES, [tour, tour])
        return rows.tour_reports(tours, species)

    def summary(self) -> Summary:
        with self._read():
            stats = self.query(
                "SELECT count(*) AS n, coalesce(sum(CASE WHEN agree = 0 THEN 1 ELSE 0 END), 0) AS bad, "
                "count(agree) AS cmp FROM confirmations"
            )[0]
            reports = self.tour_report()
        return summarize(reports, ConfirmationStats(int(stats["n"]), int(stats["cmp"]), int(stats["bad"])))

    # ---------------------------------------------------------------- releases
    def publish_release(
        self,
        version: str,
        sha256: str,
        feature_fingerprint: str,
        path: str,
        manifest: dict[str, Any],
        signature: ReleaseSignature | None = None,
    ) -> ReleaseRecord:
        sig, key, statement, chain = rows.signature_columns(signature)
        with self.tx() as db:
            db.execute("UPDATE releases SET current = 0 WHERE current = 1")
            db.execute(
                "INSERT OR REPLACE INTO releases (version, sha256, feature_fingerprint, path, manifest_json, "
                "created_at, current, signature, key_id, statement_json, key_rotations_json) "
                "VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)",
                [
                    version,
                    sha256,
                    feature_fingerprint,
                    path,
                    json.dumps(manifest),
                    _ts(utcnow()),
                    sig,
                    key,
                    statement,
                    chain,
                ],
            )
        rec = self.current_release()
        assert rec is not None
        return rec

    def current_release(self) -> ReleaseRecord | None:
        found = self.query("SELECT * FROM releases WHERE current = 1")
        return rows.release(found[0]) if found else None

    def releases(self) -> list[ReleaseRecord]:
        return [rows.release(r) for r in self.query("SELECT * FROM releases ORDER BY created_at, version")]

    # ---------------------------------------------------------------- misc
    def counts(self) -> dict[str, int]:
        sql = " UNION ALL ".join(f"SELECT '{t}' AS t, count(*) AS n FROM {t}" for t in COUNTED)
        return {r["t"]: int(r["n"]) for r in self.query(sql)}
