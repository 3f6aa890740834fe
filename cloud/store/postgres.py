"""The cloud store on PostgreSQL, for several service replicas over one database: psycopg 3
with a connection pool (``psycopg-pool``), chosen by ``SILENCIO_CLOUD_DATABASE_URL=postgresql://…``.

How replicas stay consistent:

* Migrations run under a session advisory lock: replicas starting together apply each one once.
* Writes are ``INSERT … ON CONFLICT DO NOTHING`` on the client UUIDs, so two replicas storing the
  same batch at once store it once (the second waits for the first to commit, then sees a
  duplicate). A sync batch is inserted in UUID order (tours, then detections), so concurrent
  overlapping batches take their row locks in one order; a deadlock or serialization failure
  the server still reports is retried (bounded, with jitter), as is a dropped connection —
  every write is idempotent.
* A confirmation is inserted under a per-device transaction advisory lock, so ``seq`` grows in
  commit order per device and a device paging with ``since`` never skips one.
* Exactly one release is current (a partial unique index, and the table locked while switching).

Timestamps are ``timestamptz`` (UTC in the session), UUIDs ``uuid``, JSON ``jsonb``.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from cloud.errors import DeviceExists, NotFound, StoreError, Unauthorized, UserExists
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
)
from cloud.store.rows import norm_uuid

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.rows import dict_row
    from psycopg.types.json import Jsonb
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - the cloud extra installs them
    raise ImportError(
        f"the PostgreSQL cloud store needs psycopg 3 and psycopg-pool ({exc}); "
        "install them with: pip install 'silencio[cloud]'"
    ) from exc

log = logging.getLogger(__name__)
T = TypeVar("T")

#: advisory lock keys (``pg_advisory_lock(bigint)`` / ``pg_advisory_xact_lock(int, int)``)
MIGRATE_LOCK = 0x5115_E2C1_0000_0001
CONFIRM_LOCK = 0x5115_0C0F

MIGRATIONS: list[tuple[str, str]] = [
    (
        "initial",
        """
        CREATE TABLE devices (
            id BIGSERIAL PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL CHECK (role IN ('device', 'admin')),
            token_hash TEXT NOT NULL UNIQUE,
            created_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE tours (
            uuid UUID PRIMARY KEY,
            device_id BIGINT NOT NULL REFERENCES devices(id),
            guide TEXT NOT NULL,
            location TEXT,
            latitude DOUBLE PRECISION,
            longitude DOUBLE PRECISION,
            started_at TIMESTAMPTZ NOT NULL,
            ended_at TIMESTAMPTZ,
            received_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE detections (
            uuid UUID PRIMARY KEY,
            device_id BIGINT NOT NULL REFERENCES devices(id),
            tour_uuid UUID NOT NULL REFERENCES tours(uuid),
            species_code TEXT NOT NULL,
            start_time TIMESTAMPTZ NOT NULL,
            end_time TIMESTAMPTZ NOT NULL,
            confidence DOUBLE PRECISION NOT NULL,
            band TEXT NOT NULL,
            model_version TEXT NOT NULL,
            received_at TIMESTAMPTZ NOT NULL
        );
        CREATE INDEX detections_tour ON detections(tour_uuid);
        CREATE TABLE clips (
            uuid UUID PRIMARY KEY,
            device_id BIGINT NOT NULL REFERENCES devices(id),
            tour_uuid UUID,
            detection_uuid UUID,
            sha256 TEXT NOT NULL,
            bytes BIGINT NOT NULL,
            reason TEXT NOT NULL,
            recorded_at TIMESTAMPTZ NOT NULL,
            start_offset DOUBLE PRECISION NOT NULL DEFAULT 0,
            path TEXT NOT NULL,
            received_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE confirmations (
            seq BIGSERIAL PRIMARY KEY,
            clip_uuid UUID NOT NULL UNIQUE REFERENCES clips(uuid),
            device_id BIGINT NOT NULL REFERENCES devices(id),
            detection_uuid UUID,
            edge_species TEXT,
            agree BOOLEAN,
            species_json JSONB NOT NULL,
            model TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL
        );
        CREATE INDEX confirmations_device ON confirmations(device_id, seq);
        CREATE TABLE feedback (
            uuid UUID PRIMARY KEY,
            device_id BIGINT NOT NULL REFERENCES devices(id),
            detection_uuid UUID NOT NULL,
            kind TEXT NOT NULL,
            correct_code TEXT,
            note TEXT,
            created_at TIMESTAMPTZ NOT NULL,
            received_at TIMESTAMPTZ NOT NULL,
            exported_at TIMESTAMPTZ
        );
        CREATE TABLE releases (
            version TEXT PRIMARY KEY,
            sha256 TEXT NOT NULL,
            feature_fingerprint TEXT NOT NULL,
            path TEXT NOT NULL,
            manifest_json JSONB NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            current BOOLEAN NOT NULL DEFAULT false
        );
        CREATE UNIQUE INDEX releases_one_current ON releases(current) WHERE current
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
        ALTER TABLE devices ADD COLUMN revoked_at TIMESTAMPTZ,
            ADD COLUMN last_sync_at TIMESTAMPTZ,
            ADD COLUMN status_json JSONB;
        ALTER TABLE clips ADD COLUMN source TEXT,
            ADD COLUMN source_offset DOUBLE PRECISION,
            ADD COLUMN edge_top_json JSONB NOT NULL DEFAULT '[]';
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
            id BIGSERIAL PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL CHECK (role IN ('reviewer', 'admin')),
            token_hash TEXT NOT NULL UNIQUE,
            created_at TIMESTAMPTZ NOT NULL,
            revoked_at TIMESTAMPTZ
        );
        CREATE TABLE sessions (
            id_hash TEXT PRIMARY KEY,
            user_id BIGINT NOT NULL REFERENCES users(id),
            csrf_token TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            expires_at TIMESTAMPTZ NOT NULL
        );
        CREATE INDEX sessions_user ON sessions(user_id);
        CREATE TABLE review_verdicts (
            seq BIGSERIAL PRIMARY KEY,
            uuid UUID NOT NULL UNIQUE,
            clip_uuid UUID NOT NULL REFERENCES clips(uuid),
            reviewer TEXT NOT NULL,
            verdict TEXT NOT NULL CHECK (verdict IN ('accept', 'relabel', 'not_an_animal', 'skip')),
            species_code TEXT,
            created_at TIMESTAMPTZ NOT NULL,
            CHECK ((verdict IN ('accept', 'relabel')) = (species_code IS NOT NULL))
        );
        CREATE INDEX review_verdicts_clip ON review_verdicts(clip_uuid, seq);
        ALTER TABLE clips ADD COLUMN pinned BOOLEAN NOT NULL DEFAULT false;
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
        ALTER TABLE releases ADD COLUMN signature TEXT,
            ADD COLUMN key_id TEXT,
            ADD COLUMN statement_json TEXT,
            ADD COLUMN key_rotations_json JSONB
        """,
    ),
]
if tuple(n for n, _ in MIGRATIONS) != MIGRATION_NAMES:  # pragma: no cover - a programming error
    raise RuntimeError("cloud/store/postgres.py: migration names differ from MIGRATION_NAMES")

_TOUR_INPUT = """
    SELECT * FROM jsonb_to_recordset(%(rows)s) AS x(
        uuid uuid, guide text, location text, latitude float8, longitude float8,
        started_at timestamptz, ended_at timestamptz)
"""
_DETECTION_INPUT = """
    SELECT * FROM jsonb_to_recordset(%(rows)s) AS x(
        uuid uuid, tour_uuid uuid, species_code text, start_time timestamptz, end_time timestamptz,
        confidence float8, band text, model_version text)
"""

_INSERT_TOURS = f"""
    INSERT INTO tours (uuid, device_id, guide, location, latitude, longitude, started_at, ended_at,
        received_at)
    SELECT x.uuid, %(dev)s, x.guide, x.location, x.latitude, x.longitude, x.started_at, x.ended_at, now()
    FROM ({_TOUR_INPUT}) x ORDER BY x.uuid
    ON CONFLICT (uuid) DO NOTHING RETURNING uuid
"""
_INSERT_DETECTIONS = f"""
    INSERT INTO detections (uuid, device_id, tour_uuid, species_code, start_time, end_time, confidence,
        band, model_version, received_at)
    SELECT x.uuid, %(dev)s, x.tour_uuid, x.species_code, x.start_time, x.end_time, x.confidence, x.band,
        x.model_version, now()
    FROM ({_DETECTION_INPUT}) x JOIN tours t ON t.uuid = x.tour_uuid AND t.device_id = %(dev)s
    ORDER BY x.uuid
    ON CONFLICT (uuid) DO NOTHING RETURNING uuid
"""
_INSERT_FEEDBACK = """
    INSERT INTO feedback (uuid, device_id, detection_uuid, kind, correct_code, note, created_at, received_at)
    VALUES (%s, %s, %s, %s, %s, %s, %s, now())
    ON CONFLICT (uuid) DO NOTHING RETURNING uuid
"""
_UPSERT_RELEASE = """
    INSERT INTO releases (version, sha256, feature_fingerprint, path, manifest_json, created_at, current,
        signature, key_id, statement_json, key_rotations_json)
    VALUES (%s, %s, %s, %s, %s, now(), true, %s, %s, %s, %s)
    ON CONFLICT (version) DO UPDATE SET sha256 = excluded.sha256,
        feature_fingerprint = excluded.feature_fingerprint, path = excluded.path,
        manifest_json = excluded.manifest_json, created_at = now(), current = true,
        signature = excluded.signature, key_id = excluded.key_id, statement_json = excluded.statement_json,
        key_rotations_json = excluded.key_rotations_json
    RETURNING *
"""

_RELABEL = """
    SELECT f.uuid AS feedback_uuid, f.device_id, f.detection_uuid, f.kind, f.correct_code, f.note,
        f.created_at, f.received_at, f.exported_at, d.species_code AS edge_species, d.tour_uuid,
        c.uuid AS clip_uuid, c.path AS clip_path, c.start_offset
    FROM feedback f LEFT JOIN detections d ON d.uuid = f.detection_uuid
    LEFT JOIN clips c ON c.detection_uuid = f.detection_uuid
    WHERE %(all)s OR f.exported_at IS NULL
    ORDER BY f.received_at, f.uuid, c.received_at, c.uuid
"""

_SPECIES = """
    SELECT d.tour_uuid, d.species_code AS code, count(DISTINCT d.uuid) AS detections,
        min(d.start_time) AS first_heard,
        coalesce(bool_or(c.agree), false) AS cloud_agree,
        coalesce(bool_or(f.kind = 'confirmed'), false) AS guide_ok,
        coalesce(bool_or(f.kind IN ('wrong_species', 'not_an_animal')), false) AS flagged
    FROM detections d LEFT JOIN confirmations c ON c.detection_uuid = d.uuid
    LEFT JOIN feedback f ON f.detection_uuid = d.uuid
    WHERE %(tour)s::uuid IS NULL OR d.tour_uuid = %(tour)s::uuid
    GROUP BY d.tour_uuid, d.species_code
"""

# ---------------------------------------------------------------------------------- console
#: the three sources of a detection's judgement (combined by :func:`interface.judge`) for the
#: detections a scope selects; over every detection the cloud's rows need no join (a
#: confirmation's ``edge_species`` is its detection's species, stored when it was confirmed)
_J_CLOUD_ALL = """
    SELECT c.detection_uuid AS det, c.edge_species AS species_code, NULL::timestamptz AS start_time, c.agree,
        c.species_json->0->>'code' AS top, c.seq
    FROM confirmations c WHERE c.detection_uuid IS NOT NULL AND c.edge_species IS NOT NULL
"""
_J_CLOUD = """
    SELECT c.detection_uuid AS det, d.species_code, d.start_time, c.agree,
        c.species_json->0->>'code' AS top, c.seq
    FROM confirmations c JOIN detections d ON d.uuid = c.detection_uuid WHERE {scope}
"""
_J_GUIDE = """
    SELECT f.detection_uuid AS det, d.species_code, d.start_time, f.kind, f.correct_code, f.created_at,
        f.received_at, f.uuid
    FROM feedback f JOIN detections d ON d.uuid = f.detection_uuid WHERE {scope}
"""
_J_REVIEW = """
    SELECT k.detection_uuid AS det, d.species_code, d.start_time, v.verdict, v.species_code AS species,
        v.reviewer, v.seq
    FROM review_verdicts v JOIN clips k ON k.uuid = v.clip_uuid JOIN detections d ON d.uuid = k.detection_uuid
    WHERE v.verdict <> 'skip' AND {scope}
"""
#: one species' confirmations, through the stored ``edge_species`` (its detections' species)
_J_CLOUD_SPECIES = """
    SELECT c.detection_uuid AS det, d.species_code, d.start_time, c.agree,
        c.species_json->0->>'code' AS top, c.seq
    FROM confirmations c JOIN detections d ON d.uuid = c.detection_uuid WHERE c.edge_species = %(scope)s
"""
#: a species' candidate best clips: its confirmed clips (through the confirmations' ``edge_species``;
#: the cloud confirms every clip it stores), its clips not confirmed (yet), and the clips a reviewer
#: said are this species
_BEST_CANDIDATES = """
    SELECT k.*, d.species_code AS edge_species, d.confidence AS edge_confidence, f.species_json
    FROM confirmations f JOIN clips k ON k.uuid = f.clip_uuid JOIN detections d ON d.uuid = k.detection_uuid
    WHERE f.edge_species = %(c)s
    UNION SELECT k.*, d.species_code, d.confidence, NULL
    FROM clips k JOIN detections d ON d.uuid = k.detection_uuid
    WHERE d.species_code = %(c)s AND NOT EXISTS (SELECT 1 FROM confirmations x WHERE x.clip_uuid = k.uuid)
    UNION SELECT k.*, d.species_code, d.confidence, f.species_json
    FROM review_verdicts v JOIN clips k ON k.uuid = v.clip_uuid
        LEFT JOIN detections d ON d.uuid = k.detection_uuid LEFT JOIN confirmations f ON f.clip_uuid = k.uuid
    WHERE v.species_code = %(c)s
"""
_SCOPES = {
    "all": "true",
    "tour": "d.tour_uuid = %(scope)s",
    "species": "d.species_code = %(scope)s",
    "uuids": "d.uuid = ANY(%(scope)s)",
}
#: detections whose cloud, guide or reviewer named species ``%(c)s`` (a superset; judged after)
_NAMING = """
    SELECT detection_uuid AS det FROM confirmations
        WHERE detection_uuid IS NOT NULL AND species_json->0->>'code' = %(c)s
    UNION SELECT detection_uuid FROM feedback WHERE correct_code = %(c)s
    UNION SELECT k.detection_uuid FROM review_verdicts v JOIN clips k ON k.uuid = v.clip_uuid
        WHERE v.species_code = %(c)s AND k.detection_uuid IS NOT NULL
"""
_QUEUE_COUNT = """
    SELECT count(*) AS n FROM clips c
    LEFT JOIN (
        SELECT DISTINCT ON (clip_uuid) clip_uuid, verdict FROM review_verdicts ORDER BY clip_uuid, seq DESC
    ) lv ON lv.clip_uuid = c.uuid
    WHERE lv.verdict IS NULL OR lv.verdict = 'skip'
"""

_QUEUE = """
    WITH lastv AS (
        SELECT DISTINCT ON (clip_uuid) clip_uuid, verdict FROM review_verdicts ORDER BY clip_uuid, seq DESC
    ), q AS (
        SELECT c.uuid, c.received_at, lv.verdict IS NOT NULL AS skipped,
            CASE WHEN cf.agree = false THEN 0
                WHEN c.reason = 'flagged' OR EXISTS (
                    SELECT 1 FROM feedback f WHERE f.detection_uuid = c.detection_uuid
                    AND f.kind IN ('wrong_species', 'not_an_animal')) THEN 1
                WHEN c.reason = 'uncertain' THEN 2 ELSE 3 END AS tier
        FROM clips c
        LEFT JOIN confirmations cf ON cf.clip_uuid = c.uuid
        LEFT JOIN lastv lv ON lv.clip_uuid = c.uuid
        LEFT JOIN detections d ON d.uuid = c.detection_uuid
        JOIN devices dv ON dv.id = c.device_id
        WHERE (lv.verdict IS NULL OR lv.verdict = 'skip')
            AND (%(species)s::text IS NULL OR d.species_code = %(species)s
                OR cf.species_json->0->>'code' = %(species)s)
            AND (%(device)s::text IS NULL OR dv.name = %(device)s)
            AND (%(since)s::timestamptz IS NULL OR c.recorded_at >= %(since)s)
            AND (%(until)s::timestamptz IS NULL OR c.recorded_at < %(until)s)
    )
    SELECT uuid, count(*) OVER () AS total FROM q WHERE %(tier)s::int IS NULL OR tier = %(tier)s
    ORDER BY skipped, tier, received_at, uuid LIMIT %(limit)s OFFSET %(offset)s
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
    WHERE s.id_hash = %s AND s.expires_at > now() AND u.revoked_at IS NULL
"""

#: transaction advisory lock: reviewers' verdicts get their seq in commit order
REVIEW_LOCK = 0x5115_0E71

#: errors after which the whole operation is retried (each write is idempotent)
_RETRY = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure, psycopg.OperationalError)


def redact(url: str) -> str:
    """A connection URL without its password (for messages and logs)."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://<unparseable URL>"
    host, port, db = parts.get("host", ""), parts.get("port"), parts.get("dbname", "")
    user = parts.get("user")
    return f"postgresql://{f'{user}@' if user else ''}{host}{f':{port}' if port else ''}/{db}"


def _uuid(value: str | None) -> UUID | None:
    s = norm_uuid(value)
    return None if s is None else UUID(s)


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET TIME ZONE 'UTC'")


class PostgresCloudStore:
    """Implements :class:`cloud.store.Store` on a PostgreSQL database through a connection pool."""

    backend = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        migrate: bool = True,
        connect_timeout: float = 15.0,
        retries: int = 5,
    ) -> None:
        self.url = url
        self.retries = retries
        self._pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={"autocommit": True, "row_factory": dict_row},
            configure=_configure,
            open=False,
            name="silencio-cloud",
            timeout=60.0,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout:
            self._pool.close()
            raise StoreError(
                f"PostgreSQL at {redact(url)} did not accept a connection within {connect_timeout:g} s "
                "(is the server running, the URL right, the password correct?)"
            ) from None
        if migrate:
            self.migrate()

    def describe(self) -> str:
        return redact(self.url)

    # ---------------------------------------------------------------- plumbing
    def _run(self, fn: Callable[[psycopg.Connection[dict[str, Any]]], T]) -> T:
        """``fn(conn)`` in one transaction; retried after a deadlock, a serialization failure or a
        lost connection (every operation of this store is idempotent or read-only)."""
        for attempt in range(self.retries):
            try:
                with self._pool.connection() as conn, conn.transaction():
                    return fn(conn)
            except _RETRY as exc:
                if attempt == self.retries - 1:
                    raise StoreError(f"{redact(self.url)}: {type(exc).__name__}: {exc}") from exc
                log.info("%s (attempt %d), retrying: %s", type(exc).__name__, attempt + 1, exc)
                time.sleep(random.uniform(0.005, 0.02) * 2**attempt)
            except PoolTimeout as exc:
                raise StoreError(f"{redact(self.url)}: no free database connection ({exc})") from None
        raise AssertionError("unreachable")

    def _all(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        return self._run(lambda c: c.execute(sql, params).fetchall())

    def _one(self, sql: str, params: Any = None) -> dict[str, Any] | None:
        found = self._all(sql, params)
        return found[0] if found else None

    # ---------------------------------------------------------------- migrations
    def migrate(self) -> list[str]:
        """Apply the missing migrations, each in its own transaction, holding a session advisory
        lock: a replica that starts while another migrates waits, then finds them applied."""
        applied: list[str] = []
        try:
            with self._pool.connection() as conn:
                conn.execute("SELECT pg_advisory_lock(%s)", [MIGRATE_LOCK])
                try:
                    conn.execute(
                        "CREATE TABLE IF NOT EXISTS migrations (id BIGSERIAL PRIMARY KEY, "
                        "name TEXT NOT NULL UNIQUE, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                    )
                    done = {r["name"] for r in conn.execute("SELECT name FROM migrations").fetchall()}
                    for name, sql in MIGRATIONS:
                        if name in done:
                            continue
                        with conn.transaction():
                            conn.execute(sql)
                            conn.execute("INSERT INTO migrations (name) VALUES (%s)", [name])
                        log.info("applied migration %s to %s", name, redact(self.url))
                        applied.append(name)
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", [MIGRATE_LOCK])
        except psycopg.Error as exc:
            raise StoreError(f"migrating {redact(self.url)} failed: {exc}") from exc
        return applied

    def applied_migrations(self) -> list[str]:
        if not self._all(
            "SELECT 1 FROM pg_tables WHERE tablename = 'migrations' AND schemaname = current_schema()"
        ):
            return []
        return [r["name"] for r in self._all("SELECT name FROM migrations ORDER BY id")]

    def pending_migrations(self) -> list[str]:
        done = set(self.applied_migrations())
        return [n for n, _ in MIGRATIONS if n not in done]

    # ---------------------------------------------------------------- devices
    def add_device(self, name: str, role: Role | str = Role.DEVICE) -> str:
        r = check_role(role)
        token = secrets.token_urlsafe(32)
        added = self._run(
            lambda c: c.execute(
                "INSERT INTO devices (name, role, token_hash, created_at) VALUES (%s, %s, %s, now()) "
                "ON CONFLICT (name) DO NOTHING RETURNING id",
                [name, str(r), hash_token(token)],
            ).fetchone()
        )
        if added is None:
            raise DeviceExists(f"a device named {name!r} exists already")
        return token

    def authenticate(self, token: str | None, role: Role | str = Role.DEVICE) -> DeviceRecord:
        want = check_role(role)
        if not token:
            raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
        digest = hash_token(token)  # looked up by its hash: the token's own bytes never meet a comparison
        found = self._one("SELECT * FROM devices WHERE token_hash = %s", [digest])
        if (
            found is None
            or not same_hash(found["token_hash"], digest)
            or (want is Role.ADMIN and found["role"] != Role.ADMIN)
        ):
            raise Unauthorized(f"invalid {want} token")
        dev = rows.device(found)
        if dev.revoked:
            raise Unauthorized(f"{dev.role} {dev.name!r} was revoked")
        return dev

    def revoke_device(self, name: str) -> DeviceRecord:
        found = self._run(
            lambda c: c.execute(
                "UPDATE devices SET revoked_at = coalesce(revoked_at, now()) WHERE name = %s RETURNING *",
                [name],
            ).fetchone()
        )
        if found is None:
            raise NotFound(f"no device named {name!r}")
        return rows.device(found)

    def devices(self) -> list[DeviceRecord]:
        return [rows.device(r) for r in self._all("SELECT * FROM devices ORDER BY name")]

    # ---------------------------------------------------------------- sync
    def ingest(
        self,
        device_id: int,
        tours: Sequence[TourIn],
        detections: Sequence[DetectionIn],
        status: DeviceStatus | None = None,
    ) -> IngestReport:
        def tour_row(t: TourIn) -> dict[str, Any]:
            d = t.model_dump(mode="json")
            d["started_at"] = as_utc(t.started_at).isoformat()
            d["ended_at"] = None if t.ended_at is None else as_utc(t.ended_at).isoformat()
            return d

        def det_row(x: DetectionIn) -> dict[str, Any]:
            d = x.model_dump(mode="json")
            d["start_time"], d["end_time"] = as_utc(x.start_time).isoformat(), as_utc(x.end_time).isoformat()
            return d

        # first occurrence of each UUID, in UUID order (one lock order for every transaction)
        t_in = {str(t.uuid): tour_row(t) for t in reversed(tours)}
        d_in = {str(d.uuid): det_row(d) for d in reversed(detections)}
        t_rows = [t_in[k] for k in sorted(t_in)]
        d_rows = [d_in[k] for k in sorted(d_in)]
        status_json = None if status is None else Jsonb(status.model_dump(mode="json"))

        def run(c: psycopg.Connection[dict[str, Any]]) -> IngestReport:
            got: dict[str, Ingested] = {}  # tours
            got_d: dict[str, Ingested] = {}  # detections
            if t_rows:
                new = c.execute(
                    _INSERT_TOURS,
                    {"dev": device_id, "rows": Jsonb(t_rows)},
                ).fetchall()
                for r in new:
                    got[str(r["uuid"])] = Ingested(str(r["uuid"]), IngestResult.ACCEPTED)
                rest = [k for k in t_in if k not in got]
                if rest:
                    owners = {
                        str(r["uuid"]): r["device_id"]
                        for r in c.execute(
                            "SELECT uuid, device_id FROM tours WHERE uuid = ANY(%s)",
                            [[UUID(k) for k in rest]],
                        ).fetchall()
                    }
                    for k in rest:
                        got[k] = (
                            Ingested(k, IngestResult.DUPLICATE)
                            if owners.get(k) == device_id
                            else refused(k, IngestResult.NOT_OWNER, k)
                        )
                    ended = [t_in[k] for k in rest if owners.get(k) == device_id and t_in[k]["ended_at"]]
                    if ended:
                        c.execute(
                            f"UPDATE tours SET ended_at = x.ended_at FROM ({_TOUR_INPUT}) x "
                            "WHERE tours.uuid = x.uuid AND tours.device_id = %(dev)s "
                            "AND tours.ended_at IS DISTINCT FROM x.ended_at",
                            {"dev": device_id, "rows": Jsonb(ended)},
                        )
            if d_rows:
                new = c.execute(
                    _INSERT_DETECTIONS,
                    {"dev": device_id, "rows": Jsonb(d_rows)},
                ).fetchall()
                for r in new:
                    got_d[str(r["uuid"])] = Ingested(str(r["uuid"]), IngestResult.ACCEPTED)
                rest = [k for k in d_in if k not in got_d]
                if rest:
                    had = {
                        str(r["uuid"]): r["device_id"]
                        for r in c.execute(
                            "SELECT uuid, device_id FROM detections WHERE uuid = ANY(%s)",
                            [[UUID(k) for k in rest]],
                        ).fetchall()
                    }
                    tour_keys = sorted({d_in[k]["tour_uuid"] for k in rest})
                    tour_owner = {
                        str(r["uuid"]): r["device_id"]
                        for r in c.execute(
                            "SELECT uuid, device_id FROM tours WHERE uuid = ANY(%s)",
                            [[UUID(k) for k in tour_keys]],
                        ).fetchall()
                    }
                    for k in rest:
                        tour = str(d_in[k]["tour_uuid"])
                        if k in had:
                            got_d[k] = (
                                Ingested(k, IngestResult.DUPLICATE)
                                if had[k] == device_id
                                else refused(k, IngestResult.NOT_OWNER)
                            )
                        elif tour not in tour_owner:
                            got_d[k] = refused(k, IngestResult.UNKNOWN_TOUR, tour)
                        else:
                            got_d[k] = refused(k, IngestResult.NOT_OWNER, tour)
            c.execute(
                "UPDATE devices SET last_sync_at = now(), status_json = coalesce(%s, status_json) "
                "WHERE id = %s",
                [status_json, device_id],
            )
            return IngestReport(_ordered(got, tours), _ordered(got_d, detections))

        return self._run(run)

    def detection(self, device_id: int, uuid: str) -> DetectionRecord | None:
        key = _uuid(uuid)
        if key is None:
            return None
        found = self._one("SELECT * FROM detections WHERE uuid = %s AND device_id = %s", [key, device_id])
        return rows.detection(found) if found else None

    # ---------------------------------------------------------------- clips
    def add_clip(self, device_id: int, meta: ClipMeta, path: str) -> ClipResult:
        def run(c: psycopg.Connection[dict[str, Any]]) -> ClipResult:
            for table, key in (("tours", meta.tour_uuid), ("detections", meta.detection_uuid)):
                if key is None:
                    continue
                owner = c.execute(f"SELECT device_id FROM {table} WHERE uuid = %s", [key]).fetchone()
                if owner is not None and owner["device_id"] != device_id:
                    return ClipResult.NOT_OWNER
            new = c.execute(
                "INSERT INTO clips (uuid, device_id, tour_uuid, detection_uuid, sha256, bytes, reason, "
                "recorded_at, start_offset, path, received_at, source, source_offset, edge_top_json) "
                "VALUES (%(uuid)s, %(dev)s, %(tour_uuid)s, %(detection_uuid)s, %(sha256)s, %(bytes)s, "
                "%(reason)s, %(recorded_at)s, %(start_offset)s, %(path)s, now(), %(source)s, "
                "%(source_offset)s, %(edge_top)s) ON CONFLICT (uuid) DO NOTHING RETURNING uuid",
                {
                    "uuid": meta.uuid,
                    "dev": device_id,
                    "tour_uuid": meta.tour_uuid,
                    "detection_uuid": meta.detection_uuid,
                    "sha256": meta.sha256,
                    "bytes": meta.bytes,
                    "reason": meta.reason,
                    "recorded_at": as_utc(meta.recorded_at),
                    "start_offset": meta.start_offset,
                    "path": path,
                    "source": meta.source,
                    "source_offset": meta.source_offset,
                    "edge_top": Jsonb([e.model_dump() for e in meta.edge_top]),
                },
            ).fetchone()
            if new is not None:
                return ClipResult.ACCEPTED
            had = c.execute("SELECT device_id FROM clips WHERE uuid = %s", [meta.uuid]).fetchone()
            return ClipResult.DUPLICATE if had and had["device_id"] == device_id else ClipResult.NOT_OWNER

        return self._run(run)

    def clip(self, uuid: str) -> ClipRecord | None:
        key = _uuid(uuid)
        found = None if key is None else self._one("SELECT * FROM clips WHERE uuid = %s", [key])
        return rows.clip(found) if found else None

    def clips(self, *, tour_uuid: str | None = None, limit: int = 200) -> list[ClipRecord]:
        if tour_uuid is not None and _uuid(tour_uuid) is None:
            return []
        found = self._all(
            "SELECT * FROM clips WHERE %(t)s::uuid IS NULL OR tour_uuid = %(t)s::uuid "
            "ORDER BY received_at DESC, uuid DESC LIMIT %(n)s",
            {"t": _uuid(tour_uuid), "n": limit},
        )
        return [rows.clip(r) for r in found]

    # ---------------------------------------------------------------- confirmations
    def confirm(self, new: NewConfirmation) -> ConfirmationRecord:
        def run(c: psycopg.Connection[dict[str, Any]]) -> dict[str, Any]:
            # seq allocation and commit in one order per device: the lock is held until commit
            c.execute("SELECT pg_advisory_xact_lock(%s, %s)", [CONFIRM_LOCK, new.device_id & 0x7FFFFFFF])
            row = c.execute(
                "INSERT INTO confirmations (clip_uuid, device_id, detection_uuid, edge_species, agree, "
                "species_json, model, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, now()) "
                "ON CONFLICT (clip_uuid) DO NOTHING RETURNING *",
                [
                    UUID(new.clip_uuid),
                    new.device_id,
                    _uuid(new.detection_uuid),
                    new.edge_species,
                    new.agree,
                    Jsonb(new.species),
                    new.model,
                ],
            ).fetchone()
            if row is None:
                row = c.execute(
                    "SELECT * FROM confirmations WHERE clip_uuid = %s", [UUID(new.clip_uuid)]
                ).fetchone()
            assert row is not None
            return row

        try:
            return rows.confirmation(self._run(run))
        except pg_errors.ForeignKeyViolation as exc:
            raise NotFound(f"clip {new.clip_uuid} is not stored ({exc})") from None

    def confirmation(self, clip_uuid: str) -> ConfirmationRecord | None:
        key = _uuid(clip_uuid)
        found = None if key is None else self._one("SELECT * FROM confirmations WHERE clip_uuid = %s", [key])
        return rows.confirmation(found) if found else None

    def confirmations_since(self, device_id: int, since: int, limit: int = 200) -> list[ConfirmationRecord]:
        found = self._all(
            "SELECT * FROM confirmations WHERE device_id = %s AND seq > %s ORDER BY seq LIMIT %s",
            [device_id, since, limit],
        )
        return [rows.confirmation(r) for r in found]

    # ---------------------------------------------------------------- feedback
    def feedback(self, device_id: int, fb: FeedbackIn) -> FeedbackResult:
        def run(c: psycopg.Connection[dict[str, Any]]) -> FeedbackResult:
            det = c.execute(
                "SELECT device_id FROM detections WHERE uuid = %s", [fb.detection_uuid]
            ).fetchone()
            if det is None:
                return FeedbackResult.UNKNOWN_DETECTION
            if det["device_id"] != device_id:
                return FeedbackResult.NOT_OWNER
            new = c.execute(
                _INSERT_FEEDBACK,
                [
                    fb.uuid,
                    device_id,
                    fb.detection_uuid,
                    fb.kind,
                    fb.correct_code,
                    fb.note,
                    as_utc(fb.created_at),
                ],
            ).fetchone()
            if new is not None:
                return FeedbackResult.ACCEPTED
            had = c.execute("SELECT device_id FROM feedback WHERE uuid = %s", [fb.uuid]).fetchone()
            return (
                FeedbackResult.DUPLICATE
                if had and had["device_id"] == device_id
                else FeedbackResult.NOT_OWNER
            )

        return self._run(run)

    def relabel_queue(self, include_exported: bool = False) -> list[RelabelItem]:
        return [rows.relabel(r) for r in self._all(_RELABEL, {"all": include_exported})]

    def mark_exported(self, feedback_uuids: Sequence[str]) -> int:
        keys = sorted({k for k in (_uuid(u) for u in feedback_uuids) if k is not None})
        if not keys:
            return 0
        return self._run(
            lambda c: (
                c.execute("UPDATE feedback SET exported_at = now() WHERE uuid = ANY(%s)", [keys]).rowcount
            )
        )

    # ---------------------------------------------------------------- reports
    def _reports(self, c: psycopg.Connection[dict[str, Any]], tour: UUID | None) -> list[TourReport]:
        tours = c.execute(
            "SELECT t.*, d.name AS device FROM tours t JOIN devices d ON d.id = t.device_id "
            "WHERE %(tour)s::uuid IS NULL OR t.uuid = %(tour)s::uuid ORDER BY t.started_at, t.uuid",
            {"tour": tour},
        ).fetchall()
        species = c.execute(_SPECIES, {"tour": tour}).fetchall()
        return rows.tour_reports(tours, species)

    def tour_report(self, tour_uuid: str | None = None) -> list[TourReport]:
        if tour_uuid is not None and _uuid(tour_uuid) is None:
            return []
        return self._run(lambda c: self._reports(c, _uuid(tour_uuid)))

    def summary(self) -> Summary:
        def run(c: psycopg.Connection[dict[str, Any]]) -> Summary:
            c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot for both reads
            s = c.execute(
                "SELECT count(*) AS n, count(*) FILTER (WHERE agree = false) AS bad, count(agree) AS cmp "
                "FROM confirmations"
            ).fetchone()
            assert s is not None
            return summarize(self._reports(c, None), ConfirmationStats(s["n"], s["cmp"], s["bad"]))

        return self._run(run)

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

        def run(c: psycopg.Connection[dict[str, Any]]) -> dict[str, Any]:
            c.execute("LOCK TABLE releases IN SHARE ROW EXCLUSIVE MODE")
            c.execute("UPDATE releases SET current = false WHERE current AND version <> %s", [version])
            row = c.execute(
                _UPSERT_RELEASE,
                [version, sha256, feature_fingerprint, path, Jsonb(manifest), sig, key, statement, chain],
            ).fetchone()
            assert row is not None
            return row

        return rows.release(self._run(run))

    def current_release(self) -> ReleaseRecord | None:
        found = self._one("SELECT * FROM releases WHERE current")
        return rows.release(found) if found else None

    def releases(self) -> list[ReleaseRecord]:
        return [rows.release(r) for r in self._all("SELECT * FROM releases ORDER BY created_at, version")]

    # ---------------------------------------------------------------- misc
    def counts(self) -> dict[str, int]:
        sql = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t}) AS {t}" for t in COUNTED)
        found = self._one(sql)
        assert found is not None
        return {t: int(found[t]) for t in COUNTED}

    def close(self) -> None:
        self._pool.close()

    # ================================================================ console (cloud/console/)
    # ---------------------------------------------------------------- users
    def add_user(self, name: str, role: UserRole | str) -> str:
        r = check_user_role(role)
        if not name.strip():
            raise ValueError("a user needs a name")
        token = new_secret()
        added = self._run(
            lambda c: c.execute(
                "INSERT INTO users (name, role, token_hash, created_at) VALUES (%s, %s, %s, now()) "
                "ON CONFLICT (name) DO NOTHING RETURNING id",
                [name, str(r), hash_token(token)],
            ).fetchone()
        )
        if added is None:
            raise UserExists(f"a console user named {name!r} exists already")
        return token

    def authenticate_user(self, token: str | None) -> UserRecord:
        if not token:
            raise Unauthorized("missing login token")
        digest = hash_token(token)
        found = self._one("SELECT * FROM users WHERE token_hash = %s", [digest])
        if found is None or not same_hash(found["token_hash"], digest):
            raise Unauthorized("invalid login token")
        user = rows.user(found)
        if user.revoked:
            raise Unauthorized(f"user {user.name!r} was revoked")
        return user

    def revoke_user(self, name: str) -> UserRecord:
        def run(c: psycopg.Connection[dict[str, Any]]) -> dict[str, Any] | None:
            row = c.execute(
                "UPDATE users SET revoked_at = coalesce(revoked_at, now()) WHERE name = %s RETURNING *",
                [name],
            ).fetchone()
            if row is not None:
                c.execute("DELETE FROM sessions WHERE user_id = %s", [row["id"]])
            return row

        found = self._run(run)
        if found is None:
            raise NotFound(f"no console user named {name!r}")
        return rows.user(found)

    def users(self) -> list[UserRecord]:
        return [rows.user(r) for r in self._all("SELECT * FROM users ORDER BY name")]

    # ---------------------------------------------------------------- sessions
    def create_session(self, user_id: int, ttl_s: float) -> tuple[str, str]:
        sid, csrf = new_secret(), new_secret()

        def run(c: psycopg.Connection[dict[str, Any]]) -> None:
            c.execute("DELETE FROM sessions WHERE expires_at <= now()")
            c.execute(
                "INSERT INTO sessions (id_hash, user_id, csrf_token, created_at, expires_at) "
                "VALUES (%s, %s, %s, now(), now() + %s)",
                [hash_token(sid), user_id, csrf, timedelta(seconds=ttl_s)],
            )

        try:
            self._run(run)
        except pg_errors.ForeignKeyViolation:
            raise NotFound(f"no console user with id {user_id}") from None
        return sid, csrf

    def session(self, session_id: str | None) -> SessionRecord | None:
        if not session_id:
            return None
        digest = hash_token(session_id)
        found = self._one(_SESSION, [digest])
        if found is None or not same_hash(found["id_hash"], digest):
            return None
        return rows.session(found)

    def delete_session(self, session_id: str) -> None:
        self._run(lambda c: c.execute("DELETE FROM sessions WHERE id_hash = %s", [hash_token(session_id)]))

    # ---------------------------------------------------------------- reviewers' verdicts
    def add_review_verdict(
        self, clip_uuid: str, reviewer: str, verdict: ReviewVerdict | str, species_code: str | None
    ) -> ReviewVerdictRecord:
        v = check_verdict(verdict, species_code)
        key = _uuid(clip_uuid)
        if key is None:
            raise NotFound(f"clip {clip_uuid} is not stored")
        new = uuidlib.uuid4()

        def run(c: psycopg.Connection[dict[str, Any]]) -> dict[str, Any]:
            # seq allocation and commit in one order: the lock is held until commit
            c.execute("SELECT pg_advisory_xact_lock(%s)", [REVIEW_LOCK])
            row = c.execute(
                "INSERT INTO review_verdicts (uuid, clip_uuid, reviewer, verdict, species_code, created_at) "
                "VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (uuid) DO NOTHING RETURNING *",
                [new, key, reviewer, str(v), species_code],
            ).fetchone()
            if row is None:  # a retry after a commit whose answer was lost
                row = c.execute("SELECT * FROM review_verdicts WHERE uuid = %s", [new]).fetchone()
            assert row is not None
            return row

        try:
            return rows.verdict(self._run(run))
        except pg_errors.ForeignKeyViolation:
            raise NotFound(f"clip {clip_uuid} is not stored") from None

    def review_verdicts(self, since_seq: int = 0) -> list[ReviewVerdictRecord]:
        found = self._all("SELECT * FROM review_verdicts WHERE seq > %s ORDER BY seq", [since_seq])
        return [rows.verdict(r) for r in found]

    # ---------------------------------------------------------------- pins and releases
    def pin_clip(self, clip_uuid: str, pinned: bool) -> ClipRecord:
        key = _uuid(clip_uuid)
        found = (
            None
            if key is None
            else self._run(
                lambda c: c.execute(
                    "UPDATE clips SET pinned = %s WHERE uuid = %s RETURNING *", [bool(pinned), key]
                ).fetchone()
            )
        )
        if found is None:
            raise NotFound(f"clip {clip_uuid} is not stored")
        return rows.clip(found)

    def set_current_release(self, version: str) -> ReleaseRecord:
        def run(c: psycopg.Connection[dict[str, Any]]) -> dict[str, Any] | None:
            c.execute("LOCK TABLE releases IN SHARE ROW EXCLUSIVE MODE")
            if c.execute("SELECT 1 FROM releases WHERE version = %s", [version]).fetchone() is None:
                return None
            c.execute("UPDATE releases SET current = false WHERE current AND version <> %s", [version])
            return c.execute(
                "UPDATE releases SET current = true WHERE version = %s RETURNING *", [version]
            ).fetchone()

        found = self._run(run)
        if found is None:
            raise NotFound(f"no release {version!r}")
        return rows.release(found)

    # ---------------------------------------------------------------- console pages (reads)
    def _snapshot(self, fn: Callable[[psycopg.Connection[dict[str, Any]]], T]) -> T:
        """``fn(conn)`` in one REPEATABLE READ transaction: its reads see one snapshot."""

        def run(c: psycopg.Connection[dict[str, Any]]) -> T:
            c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            return fn(c)

        return self._run(run)

    def _judge(
        self, c: psycopg.Connection[dict[str, Any]], scope: str, value: Any = None
    ) -> dict[str, tuple[datetime | None, Judgement]]:
        """Judgements of the detections ``scope`` (a key of ``_SCOPES``) selects."""
        where = _SCOPES[scope]
        p = {"scope": value}
        cloud = {"all": _J_CLOUD_ALL, "species": _J_CLOUD_SPECIES}.get(scope) or _J_CLOUD.format(scope=where)
        return judge(
            c.execute(cloud, p).fetchall(),
            c.execute(_J_GUIDE.format(scope=where), p).fetchall(),
            c.execute(_J_REVIEW.format(scope=where), p).fetchall(),
        )

    def console_overview(self) -> ConsoleOverview:
        def run(c: psycopg.Connection[dict[str, Any]]) -> ConsoleOverview:
            per_day = {
                r["day"].isoformat(): int(r["n"])
                for r in c.execute(
                    "SELECT started_at::date AS day, count(*) AS n FROM tours GROUP BY day ORDER BY day"
                ).fetchall()
            }
            heard = {
                r["species_code"]: int(r["n"])
                for r in c.execute(
                    "SELECT species_code, count(*) AS n FROM detections GROUP BY species_code"
                ).fetchall()
            }
            judged = [j for _, j in self._judge(c, "all").values()]
            rates = [
                DayRate(r["day"].isoformat(), int(r["compared"]), int(r["bad"]))
                for r in c.execute(
                    "SELECT k.recorded_at::date AS day, count(f.agree) AS compared, "
                    "count(*) FILTER (WHERE f.agree = false) AS bad "
                    "FROM confirmations f JOIN clips k ON k.uuid = f.clip_uuid GROUP BY day ORDER BY day"
                ).fetchall()
            ]
            pending_row = c.execute(_QUEUE_COUNT).fetchone()
            assert pending_row is not None
            devices = [rows.device(r) for r in c.execute("SELECT * FROM devices ORDER BY name").fetchall()]
            sql = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t}) AS {t}" for t in COUNTED)
            counted = c.execute(sql).fetchone()
            assert counted is not None
            counts = {t: int(counted[t]) for t in COUNTED}
            return ConsoleOverview(
                per_day, overview_species(heard, judged), rates, devices, int(pending_row["n"]), counts
            )

        return self._snapshot(run)

    def _queue_page(
        self, c: psycopg.Connection[dict[str, Any]], f: QueueFilter, limit: int, offset: int
    ) -> tuple[list[str], int]:
        params = {
            "species": f.species,
            "device": f.device,
            "since": None if f.since is None else as_utc(f.since),
            "until": None if f.until is None else as_utc(f.until),
            "tier": None if f.reason is None else f.reason.rank,
            "limit": max(limit, 1),
            "offset": offset,
        }
        found = c.execute(_QUEUE, params).fetchall()
        if not found and offset:  # past the end: the total still counts
            found = [{"uuid": None, "total": r["total"]} for r in c.execute(_QUEUE, {**params, "offset": 0})]
        total = int(found[0]["total"]) if found else 0
        return [str(r["uuid"]) for r in found if r["uuid"] is not None][:limit], total

    def review_queue(
        self, filters: QueueFilter | None = None, limit: int = 20, offset: int = 0
    ) -> ReviewPage:
        def run(c: psycopg.Connection[dict[str, Any]]) -> ReviewPage:
            uuids, total = self._queue_page(c, filters or QueueFilter(), limit, offset)
            return ReviewPage(self._review_items(c, uuids), total)

        return self._snapshot(run)

    def review_item(self, clip_uuid: str) -> ReviewItem | None:
        key = norm_uuid(clip_uuid)
        if key is None:
            return None
        items = self._snapshot(lambda c: self._review_items(c, [key]))
        return items[0] if items else None

    def _review_items(self, c: psycopg.Connection[dict[str, Any]], uuids: list[str]) -> list[ReviewItem]:
        if not uuids:
            return []
        keys = [UUID(u) for u in uuids]
        clips = {
            str(r["uuid"]): rows.clip(r)
            for r in c.execute("SELECT * FROM clips WHERE uuid = ANY(%s)", [keys]).fetchall()
        }
        det_keys = sorted({UUID(k.detection_uuid) for k in clips.values() if k.detection_uuid})
        dets = {
            str(r["uuid"]): rows.detection(r)
            for r in c.execute("SELECT * FROM detections WHERE uuid = ANY(%s)", [det_keys]).fetchall()
        }
        guide: dict[str, dict[str, Any]] = {}
        for r in c.execute(
            "SELECT * FROM feedback WHERE detection_uuid = ANY(%s) ORDER BY created_at, received_at, uuid",
            [det_keys],
        ).fetchall():
            guide[str(r["detection_uuid"])] = r  # the latest wins
        confs = {
            str(r["clip_uuid"]): rows.confirmation(r)
            for r in c.execute("SELECT * FROM confirmations WHERE clip_uuid = ANY(%s)", [keys]).fetchall()
        }
        verdicts: dict[str, list[ReviewVerdictRecord]] = {}
        for r in c.execute(
            "SELECT * FROM review_verdicts WHERE clip_uuid = ANY(%s) ORDER BY seq", [keys]
        ).fetchall():
            verdicts.setdefault(str(r["clip_uuid"]), []).append(rows.verdict(r))
        names = {int(r["id"]): r["name"] for r in c.execute("SELECT id, name FROM devices").fetchall()}
        return review_items(uuids, clips, dets, guide, confs, verdicts, names)

    def tours(self, limit: int = 50, offset: int = 0) -> list[TourListItem]:
        found = self._all(f"{_TOURS} ORDER BY t.started_at DESC, t.uuid LIMIT %s OFFSET %s", [limit, offset])
        return [rows.tour_item(r) for r in found]

    def tour_timeline(self, tour_uuid: str) -> TourTimeline | None:
        key = _uuid(tour_uuid)
        if key is None:
            return None

        def run(c: psycopg.Connection[dict[str, Any]]) -> TourTimeline | None:
            found = c.execute(f"{_TOURS} WHERE t.uuid = %s", [key]).fetchone()
            if found is None:
                return None
            dets = c.execute(
                "SELECT * FROM detections WHERE tour_uuid = %s ORDER BY start_time, uuid", [key]
            ).fetchall()
            judged = self._judge(c, "tour", key)
            mine = [
                rows.clip(r) for r in c.execute("SELECT * FROM clips WHERE tour_uuid = %s", [key]).fetchall()
            ]
            clips: dict[str, list[str]] = {}
            for k in sorted(mine, key=lambda k: (k.received_at, k.uuid)):
                if k.detection_uuid is not None:
                    clips.setdefault(k.detection_uuid, []).append(k.uuid)
            keys = [UUID(k.uuid) for k in mine]
            confs = {
                str(r["clip_uuid"]): rows.confirmation(r)
                for r in c.execute("SELECT * FROM confirmations WHERE clip_uuid = ANY(%s)", [keys]).fetchall()
            }
            verdicts: dict[str, list[ReviewVerdictRecord]] = {}
            for r in c.execute(
                "SELECT * FROM review_verdicts WHERE clip_uuid = ANY(%s) ORDER BY seq", [keys]
            ).fetchall():
                verdicts.setdefault(str(r["clip_uuid"]), []).append(rows.verdict(r))
            entries = []
            for r in dets:
                u = str(r["uuid"])
                j = judged[u][1] if u in judged else Judgement(u, r["species_code"])
                entries.append(TimelineEntry(rows.detection(r), j, clips.get(u, [])))
            return TourTimeline(rows.tour_item(found), entries, tour_clips(mine, confs, verdicts))

        return self._snapshot(run)

    def species_page(self, code: str, best: int = 12) -> SpeciesPage:
        def run(c: psycopg.Connection[dict[str, Any]]) -> SpeciesPage:
            per_day = {
                r["day"].isoformat(): int(r["n"])
                for r in c.execute(
                    "SELECT start_time::date AS day, count(*) AS n FROM detections "
                    "WHERE species_code = %s GROUP BY day",
                    [code],
                ).fetchall()
            }
            judged = [(t, j) for t, j in self._judge(c, "species", code).values() if t is not None]
            naming = [r["det"] for r in c.execute(_NAMING, {"c": code}).fetchall()]
            others = [j for _, j in self._judge(c, "uuids", naming).values() if j.species_code != code]
            candidates = [
                (rows.clip(r), r["edge_species"], r["edge_confidence"], from_json(r["species_json"]))
                for r in c.execute(_BEST_CANDIDATES, {"c": code}).fetchall()
            ]
            return species_pages(code, per_day, judged, candidates, others, best)

        return self._snapshot(run)

    def export_detections(
        self,
        since: datetime,
        until: datetime,
        after: tuple[datetime, str] | None = None,
        limit: int = 5000,
    ) -> list[ExportRow]:
        a_time = as_utc(after[0]) if after else datetime.min.replace(tzinfo=as_utc(since).tzinfo)
        a_uuid = _uuid(after[1]) if after else UUID(int=0)

        def run(c: psycopg.Connection[dict[str, Any]]) -> list[ExportRow]:
            found = c.execute(
                "SELECT d.*, t.guide, t.location, t.latitude, t.longitude, t.started_at AS tour_started_at, "
                "dv.name AS device, (SELECT k.path FROM clips k WHERE k.detection_uuid = d.uuid "
                "ORDER BY k.received_at LIMIT 1) AS clip_path "
                "FROM detections d JOIN tours t ON t.uuid = d.tour_uuid "
                "JOIN devices dv ON dv.id = d.device_id "
                "WHERE d.start_time >= %(since)s AND d.start_time < %(until)s "
                "AND (d.start_time, d.uuid) > (%(at)s, %(au)s) ORDER BY d.start_time, d.uuid LIMIT %(n)s",
                {"since": as_utc(since), "until": as_utc(until), "at": a_time, "au": a_uuid, "n": limit},
            ).fetchall()
            judged = self._judge(c, "uuids", [r["uuid"] for r in found])
            out = []
            for r in found:
                u = str(r["uuid"])
                out.append(
                    ExportRow(
                        detection=rows.detection(r),
                        judgement=judged[u][1] if u in judged else Judgement(u, r["species_code"]),
                        guide=r["guide"],
                        device=r["device"],
                        location=r["location"],
                        latitude=r["latitude"],
                        longitude=r["longitude"],
                        tour_started_at=to_dt(r["tour_started_at"]),
                        clip_path=r["clip_path"],
                    )
                )
            return out

        return self._snapshot(run)


def _ordered(got: dict[str, Ingested], items: Sequence[TourIn] | Sequence[DetectionIn]) -> list[Ingested]:
    """Results in the batch's order; a UUID repeated inside the batch is a duplicate of its first."""
    out, seen = [], set()
    for it in items:
        k = str(it.uuid)
        first = got[k]
        out.append(Ingested(k, IngestResult.DUPLICATE) if k in seen and first.result.stored else first)
        seen.add(k)
    return out
