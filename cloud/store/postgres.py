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
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from uuid import UUID

from cloud.errors import DeviceExists, NotFound, StoreError, Unauthorized
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
        found = self._one("SELECT * FROM devices WHERE token_hash = %s", [hash_token(token)])
        if found is None or (want is Role.ADMIN and found["role"] != Role.ADMIN):
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


def _ordered(got: dict[str, Ingested], items: Sequence[TourIn] | Sequence[DetectionIn]) -> list[Ingested]:
    """Results in the batch's order; a UUID repeated inside the batch is a duplicate of its first."""
    out, seen = [], set()
    for it in items:
        k = str(it.uuid)
        first = got[k]
        out.append(Ingested(k, IngestResult.DUPLICATE) if k in seen and first.result.stored else first)
        seen.add(k)
    return out
