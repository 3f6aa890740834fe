"""The cloud store: the only code of ``cloud`` that speaks SQL.

:class:`Store` (``interface.py``) is the protocol every caller uses; :func:`open_store` picks the
implementation from the settings:

=====================================  ==================================================
``SILENCIO_CLOUD_DATABASE_URL``        store
=====================================  ==================================================
unset                                  SQLite at ``$SILENCIO_HOME/cloud/cloud.db`` (or ``SILENCIO_CLOUD_DB``)
``sqlite:///PATH``                     SQLite at ``PATH``
``postgresql://USER:PW@HOST:PORT/DB``  PostgreSQL (psycopg 3, a connection pool): for replicas
``memory://``                          in memory: this process only (tests, the demo)
=====================================  ==================================================

Clip audio lives beside, in :class:`ClipFiles` (``SILENCIO_CLOUD_CLIP_DIR``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloud.errors import StoreError
from cloud.store.files import ClipFiles
from cloud.store.interface import (
    MIGRATION_NAMES,
    BestClip,
    ClipRecord,
    ClipResult,
    ConfirmationRecord,
    ConfirmationStats,
    Confusion,
    ConsoleOverview,
    DayRate,
    DetectionRecord,
    DetectionStatus,
    DeviceRecord,
    ExportRow,
    FeedbackResult,
    GroupTally,
    Ingested,
    IngestReport,
    IngestResult,
    Judgement,
    NewConfirmation,
    QueueFilter,
    QueueReason,
    RelabelItem,
    ReleaseRecord,
    ReleaseSignature,
    ReviewItem,
    ReviewPage,
    ReviewVerdict,
    ReviewVerdictRecord,
    Role,
    SessionRecord,
    SpeciesCount,
    SpeciesDay,
    SpeciesPage,
    SpeciesTally,
    Store,
    Summary,
    TimelineEntry,
    TourClip,
    TourListItem,
    TourReport,
    TourTimeline,
    UserRecord,
    UserRole,
    hash_token,
)
from cloud.store.memory import MemoryCloudStore
from cloud.store.sqlite import MIGRATIONS, SQLiteCloudStore

if TYPE_CHECKING:
    from cloud.settings import CloudSettings

#: the embedded default, under its old name (callers that open a SQLite file directly)
CloudStore = SQLiteCloudStore

__all__ = [
    "MIGRATIONS",
    "MIGRATION_NAMES",
    "ClipFiles",
    "ClipRecord",
    "ClipResult",
    "CloudStore",
    "ConfirmationRecord",
    "ConfirmationStats",
    "DetectionRecord",
    "DeviceRecord",
    "FeedbackResult",
    "GroupTally",
    "IngestReport",
    "IngestResult",
    "Ingested",
    "MemoryCloudStore",
    "NewConfirmation",
    "RelabelItem",
    "ReleaseRecord",
    "ReleaseSignature",
    "Role",
    "SQLiteCloudStore",
    "SpeciesTally",
    "Store",
    "Summary",
    "TourReport",
    "hash_token",
    "open_store",
    "open_url",
    # console
    "BestClip",
    "ConsoleOverview",
    "Confusion",
    "DayRate",
    "DetectionStatus",
    "ExportRow",
    "Judgement",
    "QueueFilter",
    "QueueReason",
    "ReviewItem",
    "ReviewPage",
    "ReviewVerdict",
    "ReviewVerdictRecord",
    "SessionRecord",
    "SpeciesCount",
    "SpeciesDay",
    "SpeciesPage",
    "TimelineEntry",
    "TourClip",
    "TourListItem",
    "TourTimeline",
    "UserRecord",
    "UserRole",
]


def open_store(settings: CloudSettings, *, migrate: bool | None = None) -> Store:
    """The store the settings name (``database_url``, else SQLite at ``db_path``). ``migrate``:
    apply pending migrations on open (default: the ``migrate_on_start`` setting); when not, a store
    with pending migrations is refused with the command that applies them."""
    do_migrate = settings.migrate_on_start if migrate is None else migrate
    url = settings.database_url or f"sqlite:///{settings.db_path}"
    store = open_url(url, migrate=do_migrate, pool_size=settings.db_pool_size)
    if migrate is None and not do_migrate:
        pending = store.pending_migrations()
        if pending:
            store.close()
            raise StoreError(
                f"{store.describe()} needs migrations {', '.join(pending)}: run `silencio cloud migrate` "
                "(SILENCIO_CLOUD_MIGRATE_ON_START=false)"
            )
    return store


def open_url(url: str, *, migrate: bool = True, pool_size: int = 10) -> Store:
    """A store from a database URL: ``postgresql://…``, ``sqlite:///PATH`` or ``memory://``."""
    if url.startswith(("postgresql://", "postgres://")):
        from cloud.store.postgres import PostgresCloudStore

        return PostgresCloudStore(url, pool_size=pool_size, migrate=migrate)
    if url.startswith("sqlite:///"):
        return SQLiteCloudStore(url[len("sqlite:///") :] or ":memory:", migrate=migrate)
    if url in ("memory://", "memory:"):
        return MemoryCloudStore()
    scheme = url.split(":", 1)[0] if ":" in url else url[:20]
    raise StoreError(
        f"unsupported database URL scheme {scheme!r} (SILENCIO_CLOUD_DATABASE_URL): use "
        "postgresql://USER:PASSWORD@HOST:PORT/DB, sqlite:///PATH or memory://"
    )
