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
import uuid as uuidlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cloud.errors import DeviceExists, NotFound, Unauthorized, UserExists
from cloud.schemas import ClipMeta, DetectionIn, DeviceStatus, FeedbackIn, TourIn
from cloud.store import rows
from cloud.store.interface import (
    COUNTED,
    MIGRATION_NAMES,
    ClipRecord,
    ClipResult,
    ConfirmationRecord,
    ConfirmationStats,
    ConsoleOverview,
    DayRate,
    DetectionRecord,
    DeviceRecord,
    ExportRow,
    FeedbackResult,
    Ingested,
    IngestReport,
    IngestResult,
    Judgement,
    NewConfirmation,
    QueueFilter,
    RelabelItem,
    ReleaseRecord,
    ReleaseSignature,
    ReviewItem,
    ReviewPage,
    ReviewVerdict,
    ReviewVerdictRecord,
    Role,
    SessionRecord,
    SpeciesPage,
    Summary,
    TimelineEntry,
    TourListItem,
    TourReport,
    TourTimeline,
    UserRecord,
    UserRole,
    as_utc,
    check_role,
    check_user_role,
    check_verdict,
    from_json,
    hash_token,
    judge,
    new_secret,
    overview_species,
    refused,
    review_items,
    same_hash,
    species_pages,
    summarize,
    to_dt,
    tour_clips,
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
        # console: users and their sessions, reviewers' verdicts, pins, indexes for the pages
        "console_users_reviews_pins",
        """
        CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL CHECK (role IN ('reviewer', 'admin')),
            token_hash TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            revoked_at TEXT
        );
        CREATE TABLE sessions (
            id_hash TEXT PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id),
            csrf_token TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL
        );
        CREATE INDEX sessions_user ON sessions(user_id);
        CREATE TABLE review_verdicts (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            uuid TEXT NOT NULL UNIQUE,
            clip_uuid TEXT NOT NULL REFERENCES clips(uuid),
            reviewer TEXT NOT NULL,
            verdict TEXT NOT NULL CHECK (verdict IN ('accept', 'relabel', 'not_an_animal', 'skip')),
            species_code TEXT,
            created_at TEXT NOT NULL,
            CHECK ((verdict IN ('accept', 'relabel')) = (species_code IS NOT NULL))
        );
        CREATE INDEX review_verdicts_clip ON review_verdicts(clip_uuid, seq);
        ALTER TABLE clips ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX detections_species_time ON detections(species_code, start_time);
        CREATE INDEX detections_time ON detections(start_time);
        CREATE INDEX detections_tour_species ON detections(tour_uuid, species_code);
        CREATE INDEX tours_started ON tours(started_at);
        CREATE INDEX clips_received ON clips(received_at)
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


# ---------------------------------------------------------------------------------- console
#: the three sources of a detection's judgement (combined by :func:`interface.judge`) for the
#: detections a scope selects. A few detections (a tour, an export page): start from them and reach
#: each source through its ``detection_uuid`` index. Every detection, or one species' (thousands):
#: start from the sources (a few thousand rows) and look the detection up by its key — a
#: confirmation's ``edge_species`` is its detection's species, stored when it was confirmed, so over
#: every detection the cloud's rows need no join at all. ``CROSS JOIN`` fixes SQLite's join order.
_J_FROM_DETECTIONS = (
    """SELECT c.detection_uuid AS det, d.species_code, d.start_time, c.agree,
        json_extract(c.species_json, '$[0].code') AS top, c.seq
    FROM detections d CROSS JOIN confirmations c ON c.detection_uuid = d.uuid WHERE {scope}""",
    """SELECT f.detection_uuid AS det, d.species_code, d.start_time, f.kind, f.correct_code, f.created_at,
        f.received_at, f.uuid
    FROM detections d CROSS JOIN feedback f ON f.detection_uuid = d.uuid WHERE {scope}""",
    """SELECT k.detection_uuid AS det, d.species_code, d.start_time, v.verdict, v.species_code AS species,
        v.reviewer, v.seq
    FROM detections d CROSS JOIN clips k ON k.detection_uuid = d.uuid
        CROSS JOIN review_verdicts v ON v.clip_uuid = k.uuid
    WHERE v.verdict <> 'skip' AND {scope}""",
)
_J_FROM_SOURCES = (
    """SELECT c.detection_uuid AS det, d.species_code, d.start_time, c.agree,
        json_extract(c.species_json, '$[0].code') AS top, c.seq
    FROM confirmations c CROSS JOIN detections d ON d.uuid = c.detection_uuid
    WHERE c.edge_species = :scope""",
    """SELECT f.detection_uuid AS det, d.species_code, d.start_time, f.kind, f.correct_code, f.created_at,
        f.received_at, f.uuid
    FROM feedback f CROSS JOIN detections d ON d.uuid = f.detection_uuid WHERE {scope}""",
    """SELECT k.detection_uuid AS det, d.species_code, d.start_time, v.verdict, v.species_code AS species,
        v.reviewer, v.seq
    FROM review_verdicts v CROSS JOIN clips k ON k.uuid = v.clip_uuid
        CROSS JOIN detections d ON d.uuid = k.detection_uuid
    WHERE v.verdict <> 'skip' AND {scope}""",
)
_J_CLOUD_ALL = """
    SELECT c.detection_uuid AS det, c.edge_species AS species_code, NULL AS start_time, c.agree,
        json_extract(c.species_json, '$[0].code') AS top, c.seq
    FROM confirmations c WHERE c.detection_uuid IS NOT NULL AND c.edge_species IS NOT NULL
"""
_SCOPES = {
    "all": "1",
    "tour": "d.tour_uuid = :scope",
    "species": "d.species_code = :scope",
    "uuids": "d.uuid IN (SELECT value FROM json_each(:scope))",
}
#: detections whose cloud, guide or reviewer named species ``:c`` (a superset; judged after)
_NAMING = """
    SELECT detection_uuid AS det FROM confirmations
        WHERE detection_uuid IS NOT NULL AND json_extract(species_json, '$[0].code') = :c
    UNION SELECT detection_uuid FROM feedback WHERE correct_code = :c
    UNION SELECT k.detection_uuid FROM review_verdicts v JOIN clips k ON k.uuid = v.clip_uuid
        WHERE v.species_code = :c AND k.detection_uuid IS NOT NULL
"""
#: a species' candidate best clips: its confirmed clips (found through the confirmations'
#: ``edge_species``; the cloud confirms every clip it stores), its clips not confirmed (yet), and
#: the clips a reviewer said are this species
_BEST_CANDIDATES = """
    SELECT k.*, d.species_code AS edge_species, d.confidence AS edge_confidence, cf.species_json
    FROM confirmations cf CROSS JOIN clips k ON k.uuid = cf.clip_uuid
        CROSS JOIN detections d ON d.uuid = k.detection_uuid
    WHERE cf.edge_species = :c
    UNION SELECT k.*, d.species_code, d.confidence, NULL
    FROM clips k CROSS JOIN detections d ON d.uuid = k.detection_uuid
    WHERE d.species_code = :c AND NOT EXISTS (SELECT 1 FROM confirmations x WHERE x.clip_uuid = k.uuid)
    UNION SELECT k.*, d.species_code, d.confidence, cf.species_json
    FROM review_verdicts v CROSS JOIN clips k ON k.uuid = v.clip_uuid
        LEFT JOIN detections d ON d.uuid = k.detection_uuid
        LEFT JOIN confirmations cf ON cf.clip_uuid = k.uuid
    WHERE v.species_code = :c
"""
#: clips waiting for a reviewer (SQLite: the bare column of a max() row is that row's)
_QUEUE_COUNT = """
    SELECT count(*) AS n FROM clips c
    LEFT JOIN (SELECT clip_uuid, verdict, max(seq) FROM review_verdicts GROUP BY clip_uuid) lv
        ON lv.clip_uuid = c.uuid
    WHERE lv.verdict IS NULL OR lv.verdict = 'skip'
"""

_QUEUE = """
    WITH lastv AS (
        SELECT clip_uuid, verdict, row_number() OVER (PARTITION BY clip_uuid ORDER BY seq DESC) AS rn
        FROM review_verdicts
    ), q AS (
        SELECT c.uuid, c.received_at, lv.verdict IS NOT NULL AS skipped,
            CASE WHEN cf.agree = 0 THEN 0
                WHEN c.reason = 'flagged' OR EXISTS (
                    SELECT 1 FROM feedback f WHERE f.detection_uuid = c.detection_uuid
                    AND f.kind IN ('wrong_species', 'not_an_animal')) THEN 1
                WHEN c.reason = 'uncertain' THEN 2 ELSE 3 END AS tier
        FROM clips c
        LEFT JOIN confirmations cf ON cf.clip_uuid = c.uuid
        LEFT JOIN lastv lv ON lv.clip_uuid = c.uuid AND lv.rn = 1
        LEFT JOIN detections d ON d.uuid = c.detection_uuid
        JOIN devices dv ON dv.id = c.device_id
        WHERE (lv.verdict IS NULL OR lv.verdict = 'skip')
            AND (:species IS NULL OR d.species_code = :species
                OR json_extract(cf.species_json, '$[0].code') = :species)
            AND (:device IS NULL OR dv.name = :device)
            AND (:since IS NULL OR c.recorded_at >= :since)
            AND (:until IS NULL OR c.recorded_at < :until)
    )
    SELECT uuid, count(*) OVER () AS total FROM q WHERE :tier IS NULL OR tier = :tier
    ORDER BY skipped, tier, received_at, uuid LIMIT :limit OFFSET :offset
"""

_TOURS = """
    SELECT t.*, dv.name AS device,
        (SELECT count(*) FROM detections d WHERE d.tour_uuid = t.uuid) AS n_detections,
        (SELECT count(DISTINCT d.species_code) FROM detections d WHERE d.tour_uuid = t.uuid) AS n_species
    FROM tours t JOIN devices dv ON dv.id = t.device_id
"""

_SESSION = """
    SELECT s.*, u.name AS user_name, u.role AS user_role, u.created_at AS user_created_at,
        u.revoked_at AS user_revoked_at
    FROM sessions s JOIN users u ON u.id = s.user_id
    WHERE s.id_hash = ? AND s.expires_at > ? AND u.revoked_at IS NULL
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
        digest = hash_token(token)  # looked up by its hash: the token's own bytes never meet a comparison
        found = self.query("SELECT * FROM devices WHERE token_hash = ?", [digest])
        if (
            not found
            or not same_hash(found[0]["token_hash"], digest)
            or (want is Role.ADMIN and found[0]["role"] != Role.ADMIN)
        ):
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

    # ================================================================ console (cloud/console/)
    # ---------------------------------------------------------------- users
    def add_user(self, name: str, role: UserRole | str) -> str:
        r = check_user_role(role)
        if not name.strip():
            raise ValueError("a user needs a name")
        token = new_secret()
        with self.tx() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", [name]).fetchone():
                raise UserExists(f"a console user named {name!r} exists already")
            db.table("users").insert(
                {"name": name, "role": str(r), "token_hash": hash_token(token), "created_at": _ts(utcnow())}
            )
        return token

    def authenticate_user(self, token: str | None) -> UserRecord:
        if not token:
            raise Unauthorized("missing login token")
        digest = hash_token(token)
        found = self.query("SELECT * FROM users WHERE token_hash = ?", [digest])
        if not found or not same_hash(found[0]["token_hash"], digest):
            raise Unauthorized("invalid login token")
        user = rows.user(found[0])
        if user.revoked:
            raise Unauthorized(f"user {user.name!r} was revoked")
        return user

    def revoke_user(self, name: str) -> UserRecord:
        with self.tx() as db:
            db.execute(
                "UPDATE users SET revoked_at = coalesce(revoked_at, ?) WHERE name = ?", [_ts(utcnow()), name]
            )
            found = list(db.query("SELECT * FROM users WHERE name = ?", [name]))
            if found:
                db.execute("DELETE FROM sessions WHERE user_id = ?", [found[0]["id"]])
        if not found:
            raise NotFound(f"no console user named {name!r}")
        return rows.user(found[0])

    def users(self) -> list[UserRecord]:
        return [rows.user(r) for r in self.query("SELECT * FROM users ORDER BY name")]

    # ---------------------------------------------------------------- sessions
    def create_session(self, user_id: int, ttl_s: float) -> tuple[str, str]:
        sid, csrf = new_secret(), new_secret()
        now = utcnow()
        with self.tx() as db:
            db.execute("DELETE FROM sessions WHERE expires_at <= ?", [_ts(now)])
            try:
                db.table("sessions").insert(
                    {
                        "id_hash": hash_token(sid),
                        "user_id": user_id,
                        "csrf_token": csrf,
                        "created_at": _ts(now),
                        "expires_at": _ts(now + timedelta(seconds=ttl_s)),
                    }
                )
            except sqlite3.IntegrityError:
                raise NotFound(f"no console user with id {user_id}") from None
        return sid, csrf

    def session(self, session_id: str | None) -> SessionRecord | None:
        if not session_id:
            return None
        digest = hash_token(session_id)
        found = self.query(_SESSION, [digest, _ts(utcnow())])
        if not found or not same_hash(found[0]["id_hash"], digest):
            return None
        return rows.session(found[0])

    def delete_session(self, session_id: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM sessions WHERE id_hash = ?", [hash_token(session_id)])

    # ---------------------------------------------------------------- reviewers' verdicts
    def add_review_verdict(
        self, clip_uuid: str, reviewer: str, verdict: ReviewVerdict | str, species_code: str | None
    ) -> ReviewVerdictRecord:
        v = check_verdict(verdict, species_code)
        key = norm_uuid(clip_uuid)
        row = {
            "uuid": str(uuidlib.uuid4()),
            "clip_uuid": key,
            "reviewer": reviewer,
            "verdict": str(v),
            "species_code": species_code,
            "created_at": _ts(utcnow()),
        }
        with self.tx() as db:
            if key is None or not db.execute("SELECT 1 FROM clips WHERE uuid = ?", [key]).fetchone():
                raise NotFound(f"clip {clip_uuid} is not stored")
            db.table("review_verdicts").insert(row)
            found = list(db.query("SELECT * FROM review_verdicts WHERE uuid = ?", [row["uuid"]]))
        return rows.verdict(found[0])

    def review_verdicts(self, since_seq: int = 0) -> list[ReviewVerdictRecord]:
        found = self.query("SELECT * FROM review_verdicts WHERE seq > ? ORDER BY seq", [since_seq])
        return [rows.verdict(r) for r in found]

    # ---------------------------------------------------------------- pins and releases
    def pin_clip(self, clip_uuid: str, pinned: bool) -> ClipRecord:
        key = norm_uuid(clip_uuid)
        with self.tx() as db:
            n = db.execute("UPDATE clips SET pinned = ? WHERE uuid = ?", [int(pinned), key]).rowcount
        if not n:
            raise NotFound(f"clip {clip_uuid} is not stored")
        rec = self.clip(clip_uuid)
        assert rec is not None
        return rec

    def set_current_release(self, version: str) -> ReleaseRecord:
        with self.tx() as db:
            if not db.execute("SELECT 1 FROM releases WHERE version = ?", [version]).fetchone():
                raise NotFound(f"no release {version!r}")
            db.execute("UPDATE releases SET current = (version = ?)", [version])
        rec = self.current_release()
        assert rec is not None
        return rec

    # ---------------------------------------------------------------- console pages (reads)
    def _judge(self, scope: str, value: Any = None) -> dict[str, tuple[datetime | None, Judgement]]:
        """Judgements of the detections ``scope`` (a key of ``_SCOPES``) selects; call in ``_read``."""
        where = _SCOPES[scope]
        p = {"scope": json.dumps(value) if scope == "uuids" else value}
        if scope in ("all", "species"):
            cloud, guide, review = _J_FROM_SOURCES
            cloud = _J_CLOUD_ALL if scope == "all" else cloud
        else:
            cloud, guide, review = _J_FROM_DETECTIONS
        cur = self.db.conn.cursor()
        cur.row_factory = sqlite3.Row  # mappings made in C: thousands of rows per page

        def q(sql: str) -> list[sqlite3.Row]:
            return cur.execute(sql.format(scope=where), p).fetchall()

        with self.lock:
            return judge(q(cloud), q(guide), q(review))

    def console_overview(self) -> ConsoleOverview:
        with self._read():
            per_day = {
                r["day"]: int(r["n"])
                for r in self.query(
                    "SELECT substr(started_at, 1, 10) AS day, count(*) AS n FROM tours "
                    "GROUP BY day ORDER BY day"
                )
            }
            heard = {
                r["species_code"]: int(r["n"])
                for r in self.query(
                    "SELECT species_code, count(*) AS n FROM detections GROUP BY species_code"
                )
            }
            judged = [j for _, j in self._judge("all").values()]
            rates = [
                DayRate(r["day"], int(r["compared"]), int(r["bad"]))
                for r in self.query(
                    "SELECT substr(k.recorded_at, 1, 10) AS day, count(c.agree) AS compared, "
                    "coalesce(sum(CASE WHEN c.agree = 0 THEN 1 ELSE 0 END), 0) AS bad "
                    "FROM confirmations c JOIN clips k ON k.uuid = c.clip_uuid GROUP BY day ORDER BY day"
                )
            ]
            pending = int(self.query(_QUEUE_COUNT)[0]["n"])
            devices = self.devices()
            counts = self.counts()
        return ConsoleOverview(per_day, overview_species(heard, judged), rates, devices, pending, counts)

    def _queue_page(self, f: QueueFilter, limit: int, offset: int) -> tuple[list[str], int]:
        params = {
            "species": f.species,
            "device": f.device,
            "since": _ts(f.since),
            "until": _ts(f.until),
            "tier": None if f.reason is None else f.reason.rank,
            "limit": max(limit, 1),
            "offset": offset,
        }
        found = self.query(_QUEUE, params)
        if not found and offset:  # past the end: the total still counts
            found = [{"uuid": None, "total": r["total"]} for r in self.query(_QUEUE, {**params, "offset": 0})]
        total = int(found[0]["total"]) if found else 0
        return [r["uuid"] for r in found if r["uuid"] is not None][:limit], total

    def review_queue(
        self, filters: QueueFilter | None = None, limit: int = 20, offset: int = 0
    ) -> ReviewPage:
        with self._read():
            uuids, total = self._queue_page(filters or QueueFilter(), limit, offset)
            items = self._review_items(uuids)
        return ReviewPage(items, total)

    def review_item(self, clip_uuid: str) -> ReviewItem | None:
        key = norm_uuid(clip_uuid)
        if key is None:
            return None
        with self._read():
            items = self._review_items([key])
        return items[0] if items else None

    def _where_in(self, sql: str, keys: list[str]) -> list[dict[str, Any]]:
        """``sql`` with ``{keys}`` replaced by placeholders for ``keys`` (none: no query)."""
        if not keys:
            return []
        return self.query(sql.format(keys=", ".join("?" for _ in keys)), keys)

    def _review_items(self, uuids: list[str]) -> list[ReviewItem]:
        clips = {
            r["uuid"]: rows.clip(r)
            for r in self._where_in("SELECT * FROM clips WHERE uuid IN ({keys})", uuids)
        }
        det_keys = sorted({c.detection_uuid for c in clips.values() if c.detection_uuid})
        dets = {
            r["uuid"]: rows.detection(r)
            for r in self._where_in("SELECT * FROM detections WHERE uuid IN ({keys})", det_keys)
        }
        guide: dict[str, dict[str, Any]] = {}
        for r in self._where_in(
            "SELECT * FROM feedback WHERE detection_uuid IN ({keys}) ORDER BY created_at, received_at, uuid",
            det_keys,
        ):
            guide[r["detection_uuid"]] = r  # the latest wins
        confs = {
            r["clip_uuid"]: rows.confirmation(r)
            for r in self._where_in("SELECT * FROM confirmations WHERE clip_uuid IN ({keys})", uuids)
        }
        verdicts: dict[str, list[ReviewVerdictRecord]] = {}
        for r in self._where_in(
            "SELECT * FROM review_verdicts WHERE clip_uuid IN ({keys}) ORDER BY seq", uuids
        ):
            verdicts.setdefault(r["clip_uuid"], []).append(rows.verdict(r))
        names = {int(r["id"]): r["name"] for r in self.query("SELECT id, name FROM devices")}
        return review_items(uuids, clips, dets, guide, confs, verdicts, names)

    def tours(self, limit: int = 50, offset: int = 0) -> list[TourListItem]:
        found = self.query(f"{_TOURS} ORDER BY t.started_at DESC, t.uuid LIMIT ? OFFSET ?", [limit, offset])
        return [rows.tour_item(r) for r in found]

    def tour_timeline(self, tour_uuid: str) -> TourTimeline | None:
        key = norm_uuid(tour_uuid)
        with self._read():
            found = self.query(f"{_TOURS} WHERE t.uuid = ?", [key])
            if not found:
                return None
            dets = self.query("SELECT * FROM detections WHERE tour_uuid = ? ORDER BY start_time, uuid", [key])
            judged = self._judge("tour", key)
            clips: dict[str, list[str]] = {}
            mine = [rows.clip(r) for r in self.query("SELECT * FROM clips WHERE tour_uuid = ?", [key])]
            for c in sorted(mine, key=lambda c: (c.received_at, c.uuid)):
                if c.detection_uuid is not None:
                    clips.setdefault(c.detection_uuid, []).append(c.uuid)
            keys = [c.uuid for c in mine]
            confs = {
                r["clip_uuid"]: rows.confirmation(r)
                for r in self._where_in("SELECT * FROM confirmations WHERE clip_uuid IN ({keys})", keys)
            }
            verdicts: dict[str, list[ReviewVerdictRecord]] = {}
            for r in self._where_in(
                "SELECT * FROM review_verdicts WHERE clip_uuid IN ({keys}) ORDER BY seq", keys
            ):
                verdicts.setdefault(r["clip_uuid"], []).append(rows.verdict(r))
        entries = [
            TimelineEntry(
                rows.detection(r),
                judged[r["uuid"]][1] if r["uuid"] in judged else Judgement(r["uuid"], r["species_code"]),
                clips.get(r["uuid"], []),
            )
            for r in dets
        ]
        return TourTimeline(rows.tour_item(found[0]), entries, tour_clips(mine, confs, verdicts))

    def species_page(self, code: str, best: int = 12) -> SpeciesPage:
        with self._read():
            per_day = {
                r["day"]: int(r["n"])
                for r in self.query(
                    "SELECT substr(start_time, 1, 10) AS day, count(*) AS n FROM detections "
                    "WHERE species_code = ? GROUP BY day",
                    [code],
                )
            }
            judged = [(t, j) for t, j in self._judge("species", code).values() if t is not None]
            naming = [r["det"] for r in self.query(_NAMING, {"c": code})]
            others = [j for _, j in self._judge("uuids", naming).values() if j.species_code != code]
            candidates = [
                (rows.clip(r), r["edge_species"], r["edge_confidence"], from_json(r["species_json"]))
                for r in self.query(_BEST_CANDIDATES, {"c": code})
            ]
        return species_pages(code, per_day, judged, candidates, others, best)

    def export_detections(
        self,
        since: datetime,
        until: datetime,
        after: tuple[datetime, str] | None = None,
        limit: int = 5000,
    ) -> list[ExportRow]:
        a_time, a_uuid = (_ts(after[0]), after[1]) if after else ("", "")
        with self._read():
            found = self.query(
                "SELECT d.*, t.guide, t.location, t.latitude, t.longitude, t.started_at AS tour_started_at, "
                "dv.name AS device, (SELECT k.path FROM clips k WHERE k.detection_uuid = d.uuid "
                "ORDER BY k.received_at LIMIT 1) AS clip_path "
                "FROM detections d JOIN tours t ON t.uuid = d.tour_uuid "
                "JOIN devices dv ON dv.id = d.device_id "
                "WHERE d.start_time >= :since AND d.start_time < :until "
                "AND (d.start_time, d.uuid) > (:at, :au) "
                "ORDER BY d.start_time, d.uuid LIMIT :n",
                {"since": _ts(since), "until": _ts(until), "at": a_time, "au": a_uuid, "n": limit},
            )
            judged = self._judge("uuids", [r["uuid"] for r in found])
        return [
            ExportRow(
                detection=rows.detection(r),
                judgement=judged[r["uuid"]][1]
                if r["uuid"] in judged
                else Judgement(r["uuid"], r["species_code"]),
                guide=r["guide"],
                device=r["device"],
                location=r["location"],
                latitude=r["latitude"],
                longitude=r["longitude"],
                tour_started_at=to_dt(r["tour_started_at"]),
                clip_path=r["clip_path"],
            )
            for r in found
        ]
