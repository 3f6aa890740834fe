"""The device's durable store: the :class:`Store` protocol (named operations with typed results from
:mod:`edge.records`) and its SQLite implementation :class:`EdgeStore` (WAL, foreign keys,
``synchronous=FULL``, migrations recorded by name). :mod:`edge.store_memory` is the in-memory
implementation; ``tests/edge/test_store_contract.py`` runs one suite against both. No other edge
module speaks SQL or sees a connection. (Past 800 lines on purpose: the protocol, the migrations and
the one SQL implementation belong together; every line of SQL of the edge is in this file.)

Rules that make "never lose a detection" hold:

* a detection is committed (its own transaction) **before** anything shows it;
* an event that keeps going is *extended* in place (``end_time``, ``confidence``) and *closed* when
  the species stops calling; only closed detections are synced, and a restart closes the events a
  crash left open;
* a detection is marked synced only after the cloud acknowledged its UUID; nothing deletes an
  unsynced detection — clip files are the only thing ever evicted, oldest already-synced first;
* a full disk (``SQLITE_FULL``) is raised as :class:`edge.errors.StorageFullError`, with the
  transaction rolled back: what was committed stays;
* :func:`open_store` runs ``PRAGMA quick_check`` first: a corrupt database is moved aside (kept,
  renamed with a timestamp) and a fresh one started, with a notice for the user — never a crash loop.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid as uuidlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import sqlite_utils

from edge.errors import StorageFullError
from edge.records import (
    AudioPause,
    Clip,
    ClipReason,
    Confirmation,
    ConfirmationResult,
    Counter,
    Detection,
    DetectionStatus,
    ExportRow,
    Feedback,
    GuideVerdict,
    ModelRecord,
    NewClip,
    NewDetection,
    NewRecording,
    NewTour,
    Pending,
    Recording,
    SpeciesCount,
    StartBasis,
    SyncBatchRows,
    SyncInfo,
    SyncMarks,
    Tour,
    TourSummary,
    cloud_scores_from_json,
    edge_scores_from_json,
    scores_to_json,
)
from shared_features.sqlite import SQLiteStore, now

log = logging.getLogger(__name__)


def new_uuid() -> str:
    return str(uuidlib.uuid4())


class Store(Protocol):
    """The edge store's named operations. Times are ISO 8601 strings; UUIDs strings."""

    #: a message for the user about how the store was opened (a corrupt database moved aside), or None
    notice: str | None

    # tours and recordings
    def start_tour(self, tour: NewTour) -> str: ...
    def end_tour(self, tour_uuid: str, at: str | None = None) -> None: ...
    def tour(self, tour_uuid: str) -> Tour | None: ...
    def tours(self) -> list[TourSummary]: ...
    def add_recording(self, rec: NewRecording) -> str: ...
    def finish_recording(self, recording_uuid: str, duration_s: float, warning: str | None) -> None: ...
    def recording(self, recording_uuid: str) -> Recording | None: ...
    def recordings(self, tour_uuid: str) -> list[Recording]: ...

    # detections
    def add_detection(self, d: NewDetection) -> str: ...
    def extend_detection(
        self, detection_uuid: str, end_time: str, offset_end: float, confidence: float, band: str
    ) -> None: ...
    def close_detection(self, detection_uuid: str) -> None: ...
    def close_open_detections(self) -> int: ...
    def detection(self, detection_uuid: str) -> Detection | None: ...
    def detections(self, tour_uuid: str | None = None) -> list[Detection]: ...
    def species_counts(self, tour_uuid: str | None = None) -> list[SpeciesCount]: ...

    # clips
    def add_clip(self, c: NewClip) -> str: ...
    def clips(self, include_evicted: bool = False) -> list[Clip]: ...
    def clip_bytes(self, tour_uuid: str | None = None) -> int: ...
    def evictable_clips(self) -> list[Clip]: ...
    def mark_evicted(self, clip_uuid: str) -> None: ...
    def flag_clips_of(self, detection_uuid: str) -> int: ...
    def recent_clip_paths(self, limit: int) -> list[str]: ...

    # feedback (the guide's verdict; never the cloud's)
    def add_feedback(
        self,
        detection_uuid: str,
        kind: GuideVerdict,
        correct_code: str | None = None,
        note: str | None = None,
    ) -> str: ...

    # sync
    def pending(self) -> Pending: ...
    def unsynced_batch(self, limit: int) -> SyncBatchRows: ...
    def mark_synced(self, marks: SyncMarks) -> None: ...
    def feedback_to_send(self) -> list[Feedback]: ...
    def mark_feedback_synced(self, feedback_uuid: str) -> None: ...
    def clips_to_send(self, limit: int | None = None) -> list[Clip]: ...
    def mark_clip_synced(self, clip_uuid: str) -> None: ...
    def mark_clip_failed(self, clip_uuid: str, error: str) -> None: ...
    def apply_confirmation(self, conf: Confirmation) -> ConfirmationResult: ...
    def sync_info(self) -> SyncInfo: ...
    def set_confirmations_cursor(self, seq: int) -> None: ...
    def record_sync(self, ok: bool, at: str | None = None) -> None: ...

    # device counters and audio state
    def add_to_counter(self, counter: Counter, n: int = 1) -> None: ...
    def counters(self) -> dict[Counter, int]: ...
    def set_audio_pause(self, pause: AudioPause | None) -> None: ...
    def audio_pause(self) -> AudioPause | None: ...

    # exports
    def export_rows(self, tour_uuid: str | None = None) -> list[ExportRow]: ...

    # models
    def install_model(
        self, version: str, path: str, sha256: str, fingerprint: str, shadow: dict[str, Any] | None
    ) -> None: ...
    def activate_model(self, version: str) -> None: ...
    def active_model(self) -> ModelRecord | None: ...
    def previous_model(self) -> ModelRecord | None: ...

    # health
    def check(self) -> str: ...
    def close(self) -> None: ...


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
    (
        # recordings (where a detection's time comes from), stored species names, the guide's verdict
        # apart from the cloud's, and where each clip was cut from
        "recordings_names_verdicts_clip_sources",
        """
        CREATE TABLE recordings (
            uuid TEXT PRIMARY KEY,
            tour_uuid TEXT NOT NULL REFERENCES tours(uuid),
            source TEXT NOT NULL,
            path TEXT,
            started_at TEXT NOT NULL,
            start_basis TEXT NOT NULL CHECK (start_basis IN ('file_name', 'flag', 'mtime', 'clock')),
            duration_s REAL,
            warning TEXT,
            created_at TEXT NOT NULL
        );
        CREATE INDEX recordings_tour ON recordings(tour_uuid, started_at);
        ALTER TABLE detections ADD COLUMN recording_uuid TEXT REFERENCES recordings(uuid);
        ALTER TABLE detections ADD COLUMN scientific_name TEXT;
        ALTER TABLE detections ADD COLUMN common_name TEXT;
        ALTER TABLE detections ADD COLUMN taxon_class TEXT;
        ALTER TABLE detections ADD COLUMN guide_verdict TEXT
            CHECK (guide_verdict IN ('wrong_species', 'not_an_animal', 'confirmed'));
        UPDATE detections SET guide_verdict = (SELECT f.kind FROM feedback f
            WHERE f.detection_uuid = detections.uuid ORDER BY f.created_at DESC LIMIT 1);
        UPDATE detections SET status = 'pending' WHERE cloud_species IS NULL;
        ALTER TABLE clips ADD COLUMN recording_uuid TEXT REFERENCES recordings(uuid);
        ALTER TABLE clips ADD COLUMN source TEXT;
        ALTER TABLE clips ADD COLUMN source_offset REAL;
        ALTER TABLE clips ADD COLUMN duration_s REAL;
        ALTER TABLE clips ADD COLUMN edge_top TEXT;
        CREATE INDEX clips_detection ON clips(detection_uuid)
        """,
    ),
]

#: The one definition of a pending detection (``Detection.sync_state`` says the same in Python).
PENDING_DETECTION = "d.closed = 1 AND d.synced_at IS NULL AND d.sync_error IS NULL"
REJECTED_DETECTION = "d.synced_at IS NULL AND d.sync_error IS NOT NULL"
_CLIP_LIVE = "c.synced_at IS NULL AND c.evicted_at IS NULL"
#: a clip waits for a sync unless it failed itself or belongs to a rejected detection
_CLIP_BLOCKED = f"(c.sync_error IS NOT NULL OR (d.uuid IS NOT NULL AND {REJECTED_DETECTION}))"
_STATE_LAST_SYNC = "last_sync"
_STATE_LAST_ERROR = "last_sync_error"
_STATE_CURSOR = "confirmations_since"
_STATE_PAUSE = "audio_pause"


def _is_full(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "full" in str(exc).lower()


def _tour(r: dict[str, Any]) -> Tour:
    return Tour(
        uuid=r["uuid"],
        guide=r["guide"],
        location=r["location"],
        latitude=r["latitude"],
        longitude=r["longitude"],
        started_at=r["started_at"],
        ended_at=r["ended_at"],
        synced_at=r["synced_at"],
    )


def _recording(r: dict[str, Any]) -> Recording:
    return Recording(
        uuid=r["uuid"],
        tour_uuid=r["tour_uuid"],
        source=r["source"],
        path=r["path"],
        started_at=r["started_at"],
        start_basis=StartBasis(r["start_basis"]),
        duration_s=r["duration_s"],
        warning=r["warning"],
    )


def _detection(r: dict[str, Any]) -> Detection:
    return Detection(
        uuid=r["uuid"],
        tour_uuid=r["tour_uuid"],
        recording_uuid=r["recording_uuid"],
        species_code=r["species_code"],
        scientific_name=r["scientific_name"],
        common_name=r["common_name"],
        taxon_class=r["taxon_class"],
        start_time=r["start_time"],
        end_time=r["end_time"],
        offset_start=float(r["offset_start"]),
        offset_end=float(r["offset_end"]),
        confidence=float(r["confidence"]),
        band=r["band"],
        model_version=r["model_version"],
        status=DetectionStatus(r["status"]),
        guide_verdict=None if r["guide_verdict"] is None else GuideVerdict(r["guide_verdict"]),
        closed=bool(r["closed"]),
        cloud_species=cloud_scores_from_json(r["cloud_species"]),
        synced_at=r["synced_at"],
        sync_error=r["sync_error"],
        created_at=r["created_at"],
    )


def _clip(r: dict[str, Any]) -> Clip:
    return Clip(
        uuid=r["uuid"],
        tour_uuid=r["tour_uuid"],
        detection_uuid=r["detection_uuid"],
        recording_uuid=r["recording_uuid"],
        path=r["path"],
        sha256=r["sha256"],
        bytes=int(r["bytes"]),
        reason=ClipReason(r["reason"]),
        start_offset=float(r["start_offset"]),
        source=r["source"],
        source_offset=r["source_offset"],
        duration_s=r["duration_s"],
        edge_top=edge_scores_from_json(r["edge_top"]),
        recorded_at=r["recorded_at"],
        synced_at=r["synced_at"],
        evicted_at=r["evicted_at"],
        sync_error=r["sync_error"],
    )


def _feedback(r: dict[str, Any]) -> Feedback:
    return Feedback(
        uuid=r["uuid"],
        detection_uuid=r["detection_uuid"],
        kind=GuideVerdict(r["kind"]),
        correct_code=r["correct_code"],
        note=r["note"],
        created_at=r["created_at"],
        synced_at=r["synced_at"],
    )


def _model(r: dict[str, Any]) -> ModelRecord:
    return ModelRecord(
        version=r["version"],
        path=r["path"],
        sha256=r["sha256"],
        feature_fingerprint=r["feature_fingerprint"],
        installed_at=r["installed_at"],
        shadow=json.loads(r["shadow_json"]) if r["shadow_json"] else None,
        active=bool(r["active"]),
        previous=bool(r["previous"]),
    )


class EdgeStore(SQLiteStore):
    """The SQLite implementation of :class:`Store` (open it with :func:`open_store` to get the
    start-up integrity check)."""

    MIGRATIONS = MIGRATIONS

    def __init__(self, path: Path | str) -> None:
        self.notice: str | None = None
        super().__init__(path, synchronous="FULL")  # a committed detection survives power loss

    @contextmanager
    def tx(self) -> Iterator[sqlite_utils.Database]:
        """One transaction; rolled back on any error. A full disk becomes :class:`StorageFullError`."""
        with self.lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    yield self.db
                    self.db.execute("COMMIT")
                except BaseException:
                    if self.db.conn.in_transaction:
                        self.db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if _is_full(exc):
                    raise StorageFullError(f"{self.path}: the database cannot grow: {exc}") from exc
                raise

    # ------------------------------------------------------------------ tours and recordings
    def start_tour(self, tour: NewTour) -> str:
        u = new_uuid()
        with self.tx() as db:
            db.table("tours").insert(
                {
                    "uuid": u,
                    "guide": tour.guide,
                    "location": tour.location,
                    "latitude": tour.latitude,
                    "longitude": tour.longitude,
                    "started_at": tour.started_at or now(),
                }
            )
        return u

    def end_tour(self, tour_uuid: str, at: str | None = None) -> None:
        """End a tour at ``at`` (default now) but never before its last detection ends, and start it
        no later than its first recording or detection: events never outlive their tour."""
        with self.tx() as db:
            row = db.execute(
                "SELECT t.started_at, (SELECT min(start_time) FROM detections WHERE tour_uuid = t.uuid), "
                "(SELECT min(started_at) FROM recordings WHERE tour_uuid = t.uuid), "
                "(SELECT max(end_time) FROM detections WHERE tour_uuid = t.uuid) "
                "FROM tours t WHERE t.uuid = ? AND t.ended_at IS NULL",
                [tour_uuid],
            ).fetchone()
            if row is None:
                return
            started, first_det, first_rec, last = row
            start = _earliest(_earliest(started, first_det), first_rec)
            db.execute(
                "UPDATE tours SET started_at = ?, ended_at = ?, synced_at = NULL WHERE uuid = ?",
                [start, _latest(_latest(at or now(), last), start), tour_uuid],
            )

    def tour(self, tour_uuid: str) -> Tour | None:
        rows = self.query("SELECT * FROM tours WHERE uuid = ?", [tour_uuid])
        return _tour(rows[0]) if rows else None

    def tours(self) -> list[TourSummary]:
        rows = self.query(
            "SELECT t.*, count(d.uuid) AS n_detections, count(DISTINCT d.species_code) AS n_species "
            "FROM tours t LEFT JOIN detections d ON d.tour_uuid = t.uuid GROUP BY t.uuid ORDER BY "
            "t.started_at"
        )
        return [TourSummary(_tour(r), int(r["n_detections"]), int(r["n_species"])) for r in rows]

    def add_recording(self, rec: NewRecording) -> str:
        u = new_uuid()
        with self.tx() as db:
            db.table("recordings").insert(
                {
                    "uuid": u,
                    "tour_uuid": rec.tour_uuid,
                    "source": rec.source,
                    "path": rec.path,
                    "started_at": rec.started_at,
                    "start_basis": str(rec.start_basis),
                    "created_at": now(),
                }
            )
        return u

    def finish_recording(self, recording_uuid: str, duration_s: float, warning: str | None) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE recordings SET duration_s = ?, warning = ? WHERE uuid = ?",
                [duration_s, warning, recording_uuid],
            )

    def recording(self, recording_uuid: str) -> Recording | None:
        rows = self.query("SELECT * FROM recordings WHERE uuid = ?", [recording_uuid])
        return _recording(rows[0]) if rows else None

    def recordings(self, tour_uuid: str) -> list[Recording]:
        rows = self.query(
            "SELECT * FROM recordings WHERE tour_uuid = ? ORDER BY started_at, rowid", [tour_uuid]
        )
        return [_recording(r) for r in rows]

    # ------------------------------------------------------------------ detections
    def add_detection(self, d: NewDetection) -> str:
        """Commit a new detection event (before anything shows it); returns its UUID."""
        u = d.uuid or new_uuid()
        with self.tx() as db:
            db.table("detections").insert(
                {
                    "uuid": u,
                    "tour_uuid": d.tour_uuid,
                    "recording_uuid": d.recording_uuid,
                    "species_code": d.species_code,
                    "scientific_name": d.scientific_name,
                    "common_name": d.common_name,
                    "taxon_class": d.taxon_class,
                    "start_time": d.start_time,
                    "end_time": d.end_time,
                    "offset_start": d.offset_start,
                    "offset_end": d.offset_end,
                    "confidence": d.confidence,
                    "band": d.band,
                    "model_version": d.model_version,
                    "created_at": now(),
                }
            )
        return u

    def extend_detection(
        self, detection_uuid: str, end_time: str, offset_end: float, confidence: float, band: str
    ) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE detections SET end_time = ?, offset_end = ?, confidence = max(confidence, ?), "
                "band = ? WHERE uuid = ? AND closed = 0",
                [end_time, offset_end, confidence, band, detection_uuid],
            )

    def close_detection(self, detection_uuid: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE detections SET closed = 1 WHERE uuid = ?", [detection_uuid])

    def close_open_detections(self) -> int:
        """After a crash or a stop: every open event ends where it was last extended."""
        with self.tx() as db:
            return int(db.execute("UPDATE detections SET closed = 1 WHERE closed = 0").rowcount)

    def detection(self, detection_uuid: str) -> Detection | None:
        rows = self.query("SELECT * FROM detections WHERE uuid = ?", [detection_uuid])
        return _detection(rows[0]) if rows else None

    def detections(self, tour_uuid: str | None = None) -> list[Detection]:
        """Oldest first (by start time)."""
        where, params = ("WHERE tour_uuid = ?", [tour_uuid]) if tour_uuid else ("", [])
        rows = self.query(f"SELECT * FROM detections {where} ORDER BY start_time, offset_start", params)
        return [_detection(r) for r in rows]

    def species_counts(self, tour_uuid: str | None = None) -> list[SpeciesCount]:
        where, params = ("WHERE tour_uuid = ?", [tour_uuid]) if tour_uuid else ("", [])
        rows = self.query(
            "SELECT species_code, count(*) AS n, min(start_time) AS first, max(start_time) AS last, "
            "sum(status = 'confirmed') AS confirmed, sum(status = 'disputed') AS disputed "
            f"FROM detections {where} GROUP BY species_code ORDER BY first",
            params,
        )
        return [
            SpeciesCount(
                r["species_code"], int(r["n"]), r["first"], r["last"], int(r["confirmed"]), int(r["disputed"])
            )
            for r in rows
        ]

    # ------------------------------------------------------------------ clips
    def add_clip(self, c: NewClip) -> str:
        u = c.uuid or new_uuid()
        with self.tx() as db:
            db.table("clips").insert(
                {
                    "uuid": u,
                    "tour_uuid": c.tour_uuid,
                    "detection_uuid": c.detection_uuid,
                    "recording_uuid": c.recording_uuid,
                    "path": c.path,
                    "sha256": c.sha256,
                    "bytes": c.bytes,
                    "reason": str(c.reason),
                    "start_offset": c.start_offset,
                    "source": c.source,
                    "source_offset": c.source_offset,
                    "duration_s": c.duration_s,
                    "edge_top": scores_to_json(c.edge_top) if c.edge_top else None,
                    "recorded_at": c.recorded_at or now(),
                }
            )
        return u

    def clips(self, include_evicted: bool = False) -> list[Clip]:
        where = "" if include_evicted else "WHERE evicted_at IS NULL"
        return [_clip(r) for r in self.query(f"SELECT * FROM clips {where} ORDER BY recorded_at, rowid")]

    def clip_bytes(self, tour_uuid: str | None = None) -> int:
        where, params = ("AND tour_uuid = ?", [tour_uuid]) if tour_uuid else ("", [])
        rows = self.query(
            f"SELECT coalesce(sum(bytes), 0) AS b FROM clips WHERE evicted_at IS NULL {where}", params
        )
        return int(rows[0]["b"])

    def evictable_clips(self) -> list[Clip]:
        """Clips whose file may go: already synced, oldest first."""
        rows = self.query(
            "SELECT * FROM clips WHERE evicted_at IS NULL AND synced_at IS NOT NULL "
            "ORDER BY recorded_at, rowid"
        )
        return [_clip(r) for r in rows]

    def mark_evicted(self, clip_uuid: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE clips SET evicted_at = ? WHERE uuid = ?", [now(), clip_uuid])

    def flag_clips_of(self, detection_uuid: str) -> int:
        """Raise the detection's stored clips to 'flagged' (synced first); returns how many."""
        with self.tx() as db:
            cur = db.execute(
                "UPDATE clips SET reason = 'flagged', synced_at = NULL WHERE detection_uuid = ? AND "
                "evicted_at IS NULL",
                [detection_uuid],
            )
            return int(cur.rowcount)

    def recent_clip_paths(self, limit: int) -> list[str]:
        rows = self.query(
            "SELECT path FROM clips WHERE evicted_at IS NULL ORDER BY recorded_at DESC, rowid DESC LIMIT ?",
            [limit],
        )
        return [str(r["path"]) for r in rows]

    # ------------------------------------------------------------------ feedback
    def add_feedback(
        self,
        detection_uuid: str,
        kind: GuideVerdict,
        correct_code: str | None = None,
        note: str | None = None,
    ) -> str:
        """The guide's verdict: a feedback row to sync, and ``guide_verdict`` on the detection (its
        ``status``, the cloud's verdict, is not touched)."""
        u = new_uuid()
        kind = GuideVerdict(kind)
        with self.tx() as db:
            db.table("feedback").insert(
                {
                    "uuid": u,
                    "detection_uuid": detection_uuid,
                    "kind": str(kind),
                    "correct_code": correct_code,
                    "note": note,
                    "created_at": now(),
                }
            )
            db.execute("UPDATE detections SET guide_verdict = ? WHERE uuid = ?", [str(kind), detection_uuid])
        return u

    # ------------------------------------------------------------------ sync
    def pending(self) -> Pending:
        d = self.query(
            f"SELECT sum({PENDING_DETECTION}) AS pending, sum(d.closed = 0) AS open, "
            f"sum({REJECTED_DETECTION}) AS rejected FROM detections d"
        )[0]
        c = self.query(
            f"SELECT sum(NOT {_CLIP_BLOCKED}) AS pending, sum({_CLIP_BLOCKED}) AS blocked FROM clips c "
            f"LEFT JOIN detections d ON d.uuid = c.detection_uuid WHERE {_CLIP_LIVE}"
        )[0]
        f = self.query(
            f"SELECT count(*) AS n FROM feedback f JOIN detections d ON d.uuid = f.detection_uuid "
            f"WHERE f.synced_at IS NULL AND NOT ({REJECTED_DETECTION})"
        )[0]
        t = self.query("SELECT count(*) AS n FROM tours WHERE synced_at IS NULL")[0]
        return Pending(
            detections=int(d["pending"] or 0),
            clips=int(c["pending"] or 0),
            feedback=int(f["n"]),
            tours=int(t["n"]),
            open_detections=int(d["open"] or 0),
            rejected_detections=int(d["rejected"] or 0),
            rejected_clips=int(c["blocked"] or 0),
        )

    def unsynced_batch(self, limit: int) -> SyncBatchRows:
        tours = self.query("SELECT * FROM tours WHERE synced_at IS NULL ORDER BY started_at")
        dets = self.query(
            f"SELECT * FROM detections d WHERE {PENDING_DETECTION} ORDER BY start_time, rowid LIMIT ?",
            [limit],
        )
        return SyncBatchRows([_tour(t) for t in tours], [_detection(d) for d in dets])

    def mark_synced(self, marks: SyncMarks) -> None:
        stamp = now()
        with self.tx() as db:
            for u in marks.tours:
                db.execute("UPDATE tours SET synced_at = ? WHERE uuid = ?", [stamp, u])
            for u in marks.detections:
                db.execute(
                    "UPDATE detections SET synced_at = ?, sync_error = NULL WHERE uuid = ?", [stamp, u]
                )
            for u, error in marks.rejected.items():
                db.execute(
                    "UPDATE detections SET sync_error = ? WHERE uuid = ? AND synced_at IS NULL", [error, u]
                )

    def feedback_to_send(self) -> list[Feedback]:
        rows = self.query(
            "SELECT f.* FROM feedback f JOIN detections d ON d.uuid = f.detection_uuid "
            "WHERE f.synced_at IS NULL AND d.synced_at IS NOT NULL ORDER BY f.created_at, f.rowid"
        )
        return [_feedback(r) for r in rows]

    def mark_feedback_synced(self, feedback_uuid: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE feedback SET synced_at = ? WHERE uuid = ?", [now(), feedback_uuid])

    def clips_to_send(self, limit: int | None = None) -> list[Clip]:
        """Unsynced stored clips whose detection (if any) the cloud has: flagged, uncertain, random."""
        rows = self.query(
            "SELECT c.* FROM clips c LEFT JOIN detections d ON d.uuid = c.detection_uuid "
            f"WHERE {_CLIP_LIVE} AND c.sync_error IS NULL "
            "AND (c.detection_uuid IS NULL OR d.synced_at IS NOT NULL) "
            "ORDER BY CASE c.reason WHEN 'flagged' THEN 0 WHEN 'uncertain' THEN 1 ELSE 2 END, "
            "c.recorded_at, c.rowid LIMIT ?",
            [-1 if limit is None else limit],
        )
        return [_clip(r) for r in rows]

    def mark_clip_synced(self, clip_uuid: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE clips SET synced_at = ?, sync_error = NULL WHERE uuid = ?", [now(), clip_uuid])

    def mark_clip_failed(self, clip_uuid: str, error: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE clips SET sync_error = ? WHERE uuid = ?", [error[:500], clip_uuid])

    def apply_confirmation(self, conf: Confirmation) -> ConfirmationResult:
        """The cloud's verdict becomes the detection's ``status`` (whatever the guide said: that is
        ``guide_verdict``), and its species list is kept for display."""
        if conf.detection_uuid is None:
            return ConfirmationResult.NO_DETECTION
        if conf.agree is None:
            return ConfirmationResult.NO_VERDICT
        status = DetectionStatus.CONFIRMED if conf.agree else DetectionStatus.DISPUTED
        with self.tx() as db:
            cur = db.execute(
                "UPDATE detections SET status = ?, cloud_species = ? WHERE uuid = ?",
                [str(status), scores_to_json(conf.species), conf.detection_uuid],
            )
            if cur.rowcount == 0:
                return ConfirmationResult.UNKNOWN_DETECTION
        return ConfirmationResult.APPLIED

    def _state(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM sync_state WHERE key = ?", [key])
        return str(rows[0]["value"]) if rows else None

    def _set_state(self, key: str, value: str | None) -> None:
        with self.tx() as db:
            if value is None:
                db.execute("DELETE FROM sync_state WHERE key = ?", [key])
            else:
                db.execute("INSERT OR REPLACE INTO sync_state (key, value) VALUES (?, ?)", [key, value])

    def sync_info(self) -> SyncInfo:
        return SyncInfo(
            last_sync=self._state(_STATE_LAST_SYNC),
            last_error_at=self._state(_STATE_LAST_ERROR),
            confirmations_cursor=int(self._state(_STATE_CURSOR) or 0),
        )

    def set_confirmations_cursor(self, seq: int) -> None:
        self._set_state(_STATE_CURSOR, str(int(seq)))

    def record_sync(self, ok: bool, at: str | None = None) -> None:
        self._set_state(_STATE_LAST_SYNC if ok else _STATE_LAST_ERROR, at or now())

    # ------------------------------------------------------------------ counters, audio state
    def add_to_counter(self, counter: Counter, n: int = 1) -> None:
        key = f"counter:{Counter(counter)}"
        with self.tx() as db:
            db.execute(
                "INSERT INTO sync_state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                "value = CAST(value AS INTEGER) + excluded.value",
                [key, int(n)],
            )

    def counters(self) -> dict[Counter, int]:
        rows = {
            r["key"]: r["value"] for r in self.query("SELECT * FROM sync_state WHERE key LIKE 'counter:%'")
        }
        return {c: int(rows.get(f"counter:{c}", 0)) for c in Counter}

    def set_audio_pause(self, pause: AudioPause | None) -> None:
        self._set_state(_STATE_PAUSE, None if pause is None else json.dumps(pause.__dict__))

    def audio_pause(self) -> AudioPause | None:
        raw = self._state(_STATE_PAUSE)
        return AudioPause(**json.loads(raw)) if raw else None

    # ------------------------------------------------------------------ exports
    def export_rows(self, tour_uuid: str | None = None) -> list[ExportRow]:
        """Every detection (of one tour) with its tour, recording and a stored clip, oldest first."""
        where, params = ("WHERE d.tour_uuid = ?", [tour_uuid]) if tour_uuid else ("", [])
        rows = self.query(
            "SELECT d.*, (SELECT c.path FROM clips c WHERE c.detection_uuid = d.uuid AND c.evicted_at IS "
            f"NULL ORDER BY c.rowid LIMIT 1) AS clip_path FROM detections d {where} "
            "ORDER BY d.start_time, d.offset_start",
            params,
        )
        tours = {t.tour.uuid: t.tour for t in self.tours()}
        recs = {r["uuid"]: _recording(r) for r in self.query("SELECT * FROM recordings")}
        return [
            ExportRow(
                _detection(r),
                tours[r["tour_uuid"]],
                recs.get(r["recording_uuid"]) if r["recording_uuid"] else None,
                r["clip_path"],
            )
            for r in rows
        ]

    # ------------------------------------------------------------------ models
    def install_model(
        self, version: str, path: str, sha256: str, fingerprint: str, shadow: dict[str, Any] | None
    ) -> None:
        with self.tx() as db:
            db.table("models").insert(
                {
                    "version": version,
                    "path": path,
                    "sha256": sha256,
                    "feature_fingerprint": fingerprint,
                    "installed_at": now(),
                    "shadow_json": json.dumps(shadow) if shadow else None,
                    "active": 0,
                    "previous": 0,
                },
                replace=True,
            )

    def activate_model(self, version: str) -> None:
        """Atomically: the active model becomes the previous one, ``version`` the active one."""
        with self.tx() as db:
            db.execute("UPDATE models SET previous = 0")
            db.execute(
                "UPDATE models SET previous = 1, active = 0 WHERE active = 1 AND version != ?", [version]
            )
            db.execute("UPDATE models SET active = 1 WHERE version = ?", [version])

    def active_model(self) -> ModelRecord | None:
        rows = self.query("SELECT * FROM models WHERE active = 1")
        return _model(rows[0]) if rows else None

    def previous_model(self) -> ModelRecord | None:
        rows = self.query("SELECT * FROM models WHERE previous = 1")
        return _model(rows[0]) if rows else None

    # ------------------------------------------------------------------ health
    def check(self) -> str:
        """``PRAGMA quick_check``: "ok", or what is wrong."""
        rows = self.query("PRAGMA quick_check")
        return "; ".join(str(next(iter(r.values()))) for r in rows)


def _earliest(a: str, b: str | None) -> str:
    return a if b is None or _ts(a) <= _ts(b) else b


def _latest(a: str, b: str | None) -> str:
    return a if b is None or _ts(a) >= _ts(b) else b


def _ts(s: str) -> datetime:
    t = datetime.fromisoformat(s)
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def quick_check(path: Path) -> str:
    """``PRAGMA quick_check`` of a database file without opening it as a store: "ok" or the problem."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            rows: Sequence[tuple[Any, ...]] = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
        return str(exc)
    return "; ".join(str(r[0]) for r in rows) or "no answer"


def open_store(path: Path | str) -> EdgeStore:
    """Open the device's database after ``PRAGMA quick_check``. A corrupt one is moved aside (with its
    WAL and shared-memory files) to ``<name>.corrupt-<UTC time>`` and a fresh database is started;
    ``store.notice`` then says so. Detections in the old file are kept there for recovery."""
    path = Path(path)
    notice = None
    if path.exists() and path.stat().st_size > 0:
        problem = quick_check(path)
        if problem != "ok":
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            aside = path.with_name(f"{path.name}.corrupt-{stamp}")
            k = 1
            while Path(f"{aside}").exists():  # never overwrite an earlier copy
                aside, k = path.with_name(f"{path.name}.corrupt-{stamp}-{k}"), k + 1
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{path}{suffix}")
                if src.exists():
                    src.rename(Path(f"{aside}{suffix}"))
            notice = (
                f"the device database {path} failed its integrity check ({problem[:200]}); it was moved "
                f"to {aside} (kept for recovery) and a fresh database was started"
            )
            log.error(notice)
    store = EdgeStore(path)
    store.notice = notice
    return store
