"""The cloud store's interface: one :class:`Store` protocol with named operations and typed
results, implemented in memory (:mod:`cloud.store.memory`), on SQLite (:mod:`cloud.store.sqlite`,
the embedded default) and on PostgreSQL (:mod:`cloud.store.postgres`, for several service
replicas). Callers never see a connection or SQL; every implementation passes the same contract
suite (``tests/cloud/test_store_contract.py``).

Rules every implementation keeps:

* Client-generated UUIDs are primary keys: a re-sent tour, detection, clip, feedback or
  confirmation is reported as a duplicate and never stored twice, also when two replicas receive
  it at the same moment.
* A device touches only its own rows: a detection into another device's tour, a clip or feedback
  UUID another device stored, feedback on another device's detection are refused
  (``NOT_OWNER``).
* Confirmations get a ``seq`` that grows in commit order per device, so a device that pages with
  ``confirmations_since(seq)`` never skips one committed late.
* Migrations are keyed by name (:data:`MIGRATION_NAMES`, the same names on every SQL backend),
  each applied once, also when several processes start at once.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from cloud.schemas import ClipMeta, DetectionIn, DeviceStatus, EdgeScore, FeedbackIn, TourIn

#: the schema's migrations, in order; SQLite and PostgreSQL record exactly these names
MIGRATION_NAMES: tuple[str, ...] = (
    "initial",
    "bands_high_medium_low",
    "device_status_clip_source",
    "release_signatures",
)


class Role(enum.StrEnum):
    DEVICE = "device"
    ADMIN = "admin"


class IngestResult(enum.Enum):
    """What happened to one tour or detection of a sync batch."""

    ACCEPTED = "accepted"  # new, stored now
    DUPLICATE = "duplicate"  # stored before by this device (a tour's end time is updated)
    UNKNOWN_TOUR = "unknown_tour"  # a detection whose tour the cloud has not received
    NOT_OWNER = "not_owner"  # the tour, or the UUID itself, belongs to another device

    @property
    def stored(self) -> bool:
        return self in (IngestResult.ACCEPTED, IngestResult.DUPLICATE)


class ClipResult(enum.Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    NOT_OWNER = "not_owner"  # the clip UUID, its tour or its detection belongs to another device


class FeedbackResult(enum.Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    UNKNOWN_DETECTION = "unknown_detection"
    NOT_OWNER = "not_owner"  # the detection (or the feedback UUID) belongs to another device


@dataclass(frozen=True)
class Ingested:
    """One item of a sync batch: its UUID, what happened, and for a refused item why."""

    uuid: str
    result: IngestResult
    error: str | None = None


@dataclass(frozen=True)
class IngestReport:
    tours: list[Ingested]
    detections: list[Ingested]

    @property
    def items(self) -> list[Ingested]:
        return [*self.tours, *self.detections]

    def by(self, result: IngestResult) -> list[Ingested]:
        return [i for i in self.items if i.result is result]


def refused(uuid: str, result: IngestResult, tour_uuid: str | None = None) -> Ingested:
    """A refused item with the message the device shows (one wording for every backend):
    an unknown tour, another device's tour (``tour_uuid`` given), another device's UUID."""
    if result is IngestResult.UNKNOWN_TOUR:
        msg = f"unknown tour {tour_uuid} (send the tour first)"
    elif result is IngestResult.NOT_OWNER:
        msg = "tour belongs to another device" if tour_uuid is not None else "uuid belongs to another device"
    else:
        raise ValueError(f"{result} is not a refusal")
    return Ingested(uuid, result, msg)


@dataclass(frozen=True)
class DeviceRecord:
    id: int
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None = None
    #: when this device last synced, and the status it reported then (wire v2 ``DeviceStatus``)
    last_sync_at: datetime | None = None
    status: DeviceStatus | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class DetectionRecord:
    uuid: str
    device_id: int
    tour_uuid: str
    species_code: str
    start_time: datetime
    end_time: datetime
    confidence: float
    band: str
    model_version: str
    received_at: datetime


@dataclass(frozen=True)
class ClipRecord:
    uuid: str
    device_id: int
    tour_uuid: str | None
    detection_uuid: str | None
    sha256: str
    bytes: int
    reason: str
    recorded_at: datetime
    start_offset: float
    path: str
    received_at: datetime
    #: the recording the clip was cut from and where in it (s), and the edge model's top scores
    source: str | None = None
    source_offset: float | None = None
    edge_top: list[EdgeScore] = field(default_factory=list)


@dataclass(frozen=True)
class ConfirmationRecord:
    """The ensemble's verdict on one clip; ``seq`` is the cursor devices page with."""

    seq: int
    clip_uuid: str
    device_id: int
    detection_uuid: str | None
    edge_species: str | None
    agree: bool | None
    species: list[dict[str, Any]]
    model: str
    created_at: datetime

    def wire(self) -> dict[str, Any]:
        """The fields of the wire model :class:`cloud.schemas.Confirmation`."""
        out = asdict(self)
        del out["device_id"]
        return out


@dataclass(frozen=True)
class RelabelItem:
    """A guide's feedback with its detection and (one of) its clips: a row of the relabelling
    queue that ``export-feedback`` turns into labelled clips."""

    feedback_uuid: str
    device_id: int
    detection_uuid: str
    kind: str
    correct_code: str | None
    note: str | None
    created_at: datetime
    received_at: datetime
    exported_at: datetime | None
    edge_species: str | None
    tour_uuid: str | None
    clip_uuid: str | None
    clip_path: str | None
    start_offset: float | None

    @property
    def label(self) -> str:
        """The species the clip should be labelled with ('' for "not an animal")."""
        if self.kind == "wrong_species":
            return self.correct_code or ""
        if self.kind == "confirmed":
            return self.edge_species or ""
        return ""


@dataclass(frozen=True)
class SpeciesTally:
    """One species on one tour."""

    code: str
    detections: int
    first_heard: datetime
    cloud_agree: bool  # a confirmation of one of its detections agreed with the edge
    guide_confirmed: bool  # the guide confirmed one of its detections
    flagged: bool  # the guide flagged one as the wrong species or not an animal

    @property
    def confirmed(self) -> bool:
        return self.cloud_agree or self.guide_confirmed


@dataclass(frozen=True)
class TourReport:
    uuid: str
    guide: str
    device: str
    location: str | None
    latitude: float | None
    longitude: float | None
    started_at: datetime
    ended_at: datetime | None
    species: list[SpeciesTally]

    @property
    def species_heard(self) -> int:
        return len(self.species)

    @property
    def species_confirmed(self) -> int:
        return sum(1 for s in self.species if s.confirmed)


@dataclass(frozen=True)
class ConfirmationStats:
    confirmations: int
    compared: int  # confirmations of a clip that had an edge detection to compare with
    disagreements: int


@dataclass(frozen=True)
class GroupTally:
    tours: int
    species_heard: int
    species_confirmed: int


@dataclass(frozen=True)
class Summary:
    tours: int
    mean_species_confirmed_per_tour: float
    mean_species_heard_per_tour: float
    disagreement_rate: float | None
    confirmations: int
    per_day: dict[str, GroupTally]
    per_guide: dict[str, GroupTally]


@dataclass(frozen=True)
class ReleaseSignature:
    """A release's Ed25519 signature (``shared_features.signature``): the signed statement, the
    base64 signature, the signing key's id, and the key rotations a device may need to reach it."""

    signature: str
    key_id: str
    statement: dict[str, Any]
    key_rotations: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ReleaseRecord:
    version: str
    sha256: str
    feature_fingerprint: str
    path: str
    manifest: dict[str, Any]
    created_at: datetime
    current: bool
    #: None for a release published before releases were signed (devices refuse it)
    signature: ReleaseSignature | None = None


@dataclass(frozen=True)
class NewConfirmation:
    """What :meth:`Store.confirm` stores for a clip."""

    clip_uuid: str
    device_id: int
    detection_uuid: str | None
    edge_species: str | None
    agree: bool | None
    species: list[dict[str, Any]]
    model: str


@runtime_checkable
class Store(Protocol):
    """The cloud store. Every operation is one transaction; results are typed records."""

    #: ``memory``, ``sqlite`` or ``postgresql``
    backend: str

    def describe(self) -> str:
        """Where the data lives (a path or a URL without its password)."""
        ...

    # ---------------------------------------------------------------- migrations
    def migrate(self) -> list[str]:
        """Apply the migrations not applied yet (once, also under concurrent start); their names."""
        ...

    def applied_migrations(self) -> list[str]: ...

    def pending_migrations(self) -> list[str]: ...

    # ---------------------------------------------------------------- devices
    def add_device(self, name: str, role: Role | str = Role.DEVICE) -> str:
        """Register a device (or admin) and return its token; only the token's hash is stored.
        :class:`cloud.errors.DeviceExists` when the name is taken."""
        ...

    def authenticate(self, token: str | None, role: Role | str = Role.DEVICE) -> DeviceRecord:
        """The device a bearer token belongs to (admins may act as devices);
        :class:`cloud.errors.Unauthorized` for a missing, wrong or revoked token. Reads the store
        on every call: a revocation takes effect on the next request, on every replica."""
        ...

    def revoke_device(self, name: str) -> DeviceRecord:
        """Revoke a device's token (:class:`cloud.errors.NotFound` for an unknown name)."""
        ...

    def devices(self) -> list[DeviceRecord]:
        """Every device with its last sync time and last reported status, by name."""
        ...

    # ---------------------------------------------------------------- sync
    def ingest(
        self,
        device_id: int,
        tours: Sequence[TourIn],
        detections: Sequence[DetectionIn],
        status: DeviceStatus | None = None,
    ) -> IngestReport:
        """Store a sync batch (tours first) in one transaction and record the device's sync time
        and status. Per item: accepted, duplicate, unknown tour or not the device's."""
        ...

    def detection(self, device_id: int, uuid: str) -> DetectionRecord | None:
        """The device's own detection (None for another device's or an unknown UUID)."""
        ...

    # ---------------------------------------------------------------- clips
    def add_clip(self, device_id: int, meta: ClipMeta, path: str) -> ClipResult: ...

    def clip(self, uuid: str) -> ClipRecord | None: ...

    def clips(self, *, tour_uuid: str | None = None, limit: int = 200) -> list[ClipRecord]:
        """Clips by time received (newest last), optionally of one tour."""
        ...

    # ---------------------------------------------------------------- confirmations
    def confirm(self, new: NewConfirmation) -> ConfirmationRecord:
        """Store a clip's confirmation unless it has one; return the stored one (the first
        writer wins, so every replica answers the same seq and verdict)."""
        ...

    def confirmation(self, clip_uuid: str) -> ConfirmationRecord | None: ...

    def confirmations_since(
        self, device_id: int, since: int, limit: int = 200
    ) -> list[ConfirmationRecord]: ...

    # ---------------------------------------------------------------- feedback
    def feedback(self, device_id: int, fb: FeedbackIn) -> FeedbackResult: ...

    def relabel_queue(self, include_exported: bool = False) -> list[RelabelItem]: ...

    def mark_exported(self, feedback_uuids: Sequence[str]) -> int: ...

    # ---------------------------------------------------------------- reports
    def tour_report(self, tour_uuid: str | None = None) -> list[TourReport]:
        """Species per tour (by start time); one tour, or [] when it is unknown."""
        ...

    def summary(self) -> Summary: ...

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
        """Record an edge package as the current release (exactly one is current), with its
        signature; republishing a version replaces its row, signature included."""
        ...

    def current_release(self) -> ReleaseRecord | None: ...

    def releases(self) -> list[ReleaseRecord]: ...

    # ---------------------------------------------------------------- misc
    def counts(self) -> dict[str, int]:
        """Rows per table: devices, tours, detections, clips, confirmations, feedback, releases."""
        ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------------ helpers
COUNTED = ("devices", "tours", "detections", "clips", "confirmations", "feedback", "releases")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(dt: datetime) -> datetime:
    """A wire timestamp in UTC (a naive one is taken as UTC)."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def to_dt(value: Any) -> datetime:
    """A stored timestamp (ISO text on SQLite, ``timestamptz`` on PostgreSQL) as an aware datetime."""
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return as_utc(dt)


def opt_dt(value: Any) -> datetime | None:
    return None if value is None else to_dt(value)


def opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def from_json(value: Any) -> Any:
    """A JSON column (text on SQLite, ``jsonb`` on PostgreSQL)."""
    return json.loads(value) if isinstance(value, str | bytes) else value


def check_role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise ValueError(f"unknown role {role!r} (device or admin)") from None


def summarize(tours: list[TourReport], stats: ConfirmationStats) -> Summary:
    """Per day (UTC date of the tour's start) and per guide: tours, distinct species heard and
    confirmed; the edge/cloud disagreement rate over every compared confirmation."""
    groups: dict[str, dict[str, dict[str, Any]]] = {"day": {}, "guide": {}}
    for t in tours:
        for key, val in (("day", t.started_at.date().isoformat()), ("guide", t.guide)):
            b = groups[key].setdefault(val, {"tours": 0, "heard": set(), "confirmed": set()})
            b["tours"] += 1
            b["heard"] |= {s.code for s in t.species}
            b["confirmed"] |= {s.code for s in t.species if s.confirmed}

    def tally(g: dict[str, dict[str, Any]]) -> dict[str, GroupTally]:
        return {k: GroupTally(v["tours"], len(v["heard"]), len(v["confirmed"])) for k, v in sorted(g.items())}

    n = len(tours)
    return Summary(
        tours=n,
        mean_species_confirmed_per_tour=sum(t.species_confirmed for t in tours) / n if n else 0.0,
        mean_species_heard_per_tour=sum(t.species_heard for t in tours) / n if n else 0.0,
        disagreement_rate=stats.disagreements / stats.compared if stats.compared else None,
        confirmations=stats.confirmations,
        per_day=tally(groups["day"]),
        per_guide=tally(groups["guide"]),
    )
