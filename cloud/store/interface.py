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
import hmac
import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from cloud.schemas import ClipMeta, DetectionIn, DeviceStatus, EdgeScore, FeedbackIn, TourIn

#: the schema's migrations, in order; SQLite and PostgreSQL record exactly these names
MIGRATION_NAMES: tuple[str, ...] = (
    "initial",
    "bands_high_medium_low",
    "device_status_clip_source",
    "console_users_reviews_pins",
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
    #: pinned on the console: retention never deletes it (console section)
    pinned: bool = False


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

    # ================================================================ console (cloud/console/)
    # Users and sessions of the ecologists' console, reviewers' verdicts (read by the closed loop),
    # pins, release switching, and the console pages' read operations. Records: end of this module.

    # ---------------------------------------------------------------- users
    def add_user(self, name: str, role: UserRole | str) -> str:
        """Register a console user (``reviewer`` or ``admin``) and return their login token, shown
        once: only its sha256 is stored. :class:`cloud.errors.UserExists` when the name is taken."""
        ...

    def authenticate_user(self, token: str | None) -> UserRecord:
        """The user a login token belongs to; :class:`cloud.errors.Unauthorized` for a missing, wrong
        or revoked token. Device tokens are not users: they never authenticate here."""
        ...

    def revoke_user(self, name: str) -> UserRecord:
        """Revoke a user's token and end their sessions (:class:`cloud.errors.NotFound`)."""
        ...

    def users(self) -> list[UserRecord]:
        """Every console user, by name."""
        ...

    # ---------------------------------------------------------------- sessions
    def create_session(self, user_id: int, ttl_s: float) -> tuple[str, str]:
        """A new login session: ``(session id, csrf token)``. Only the session id's sha256 is
        stored; expired sessions are purged."""
        ...

    def session(self, session_id: str | None) -> SessionRecord | None:
        """The live session with this id: None when unknown, expired, or its user is revoked."""
        ...

    def delete_session(self, session_id: str) -> None: ...

    # ---------------------------------------------------------------- reviewers' verdicts
    def add_review_verdict(
        self, clip_uuid: str, reviewer: str, verdict: ReviewVerdict | str, species_code: str | None
    ) -> ReviewVerdictRecord:
        """Store a reviewer's verdict on a clip (history is kept: the latest verdict wins).
        ``species_code`` is required for ``accept`` / ``relabel`` and must be None otherwise
        (``ValueError``); :class:`cloud.errors.NotFound` for an unknown clip. ``seq`` grows in
        commit order, so a reader paging with ``review_verdicts(since_seq)`` never skips one."""
        ...

    def review_verdicts(self, since_seq: int = 0) -> list[ReviewVerdictRecord]:
        """Every verdict after ``since_seq``, by seq."""
        ...

    # ---------------------------------------------------------------- pins and releases
    def pin_clip(self, clip_uuid: str, pinned: bool) -> ClipRecord:
        """Pin (or unpin) a clip; a pinned clip is never deleted by retention."""
        ...

    def set_current_release(self, version: str) -> ReleaseRecord:
        """Make a published release current (promote / roll back); :class:`cloud.errors.NotFound`
        for an unknown version."""
        ...

    # ---------------------------------------------------------------- console pages (reads)
    def console_overview(self) -> ConsoleOverview:
        """Tours per day, detections heard / confirmed / rejected per species, the edge/cloud
        disagreement per day, devices, the review queue's length and table counts."""
        ...

    def review_queue(
        self, filters: QueueFilter | None = None, limit: int = 20, offset: int = 0
    ) -> ReviewPage:
        """Clips awaiting a reviewer (no verdict yet, or only skipped), most valuable first:
        edge/cloud disagreement, guide flags, uncertain, random; skipped clips after the rest;
        oldest first within a tier."""
        ...

    def review_item(self, clip_uuid: str) -> ReviewItem | None:
        """One clip with everything the review page shows (also when already reviewed)."""
        ...

    def tours(self, limit: int = 50, offset: int = 0) -> list[TourListItem]:
        """Tours, newest first, with their detection and species counts."""
        ...

    def tour_timeline(self, tour_uuid: str) -> TourTimeline | None:
        """A tour's detections in time order, each with its judgement and clips, and every clip
        recorded on the tour with its latest verdict."""
        ...

    def species_page(self, code: str, best: int = 12) -> SpeciesPage:
        """One species: detections per day (confirmed, rejected), its best clips (pinned first,
        then by the cloud's / edge's score) and its most frequent confusions."""
        ...

    def export_detections(
        self,
        since: datetime,
        until: datetime,
        after: tuple[datetime, str] | None = None,
        limit: int = 5000,
    ) -> list[ExportRow]:
        """Detections that started in ``[since, until)``, by (start time, uuid), with their tour,
        judgement and first clip; page with ``after`` = the last row's ``key``."""
        ...


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


# ====================================================================================== console
# Records of the console's store operations (users, sessions, reviewers' verdicts, page reads).


class UserRole(enum.StrEnum):
    """A console user's role: reviewers review and read everything; admins also switch releases."""

    REVIEWER = "reviewer"
    ADMIN = "admin"


class ReviewVerdict(enum.StrEnum):
    """A reviewer's verdict on a clip. ``species_code`` is the species the reviewer says is in the
    clip: for ``accept`` the one they accepted (the edge's detection species unless they picked
    another of the shown top-3), for ``relabel`` the one they chose; None otherwise."""

    ACCEPT = "accept"
    RELABEL = "relabel"
    NOT_AN_ANIMAL = "not_an_animal"
    SKIP = "skip"


class QueueReason(enum.StrEnum):
    """Why a clip is in the review queue, most valuable first (the queue's order)."""

    DISAGREEMENT = "disagreement"  # the cloud's ensemble disagreed with the edge
    FLAGGED = "flagged"  # the guide flagged it (wrong species / not an animal), or sent it as flagged
    UNCERTAIN = "uncertain"  # the edge was unsure
    RANDOM = "random"  # a random sample

    @property
    def rank(self) -> int:
        return list(QueueReason).index(self)


class DetectionStatus(enum.StrEnum):
    CONFIRMED = "confirmed"
    REJECTED = "rejected"
    PENDING = "pending"


FLAG_KINDS = ("wrong_species", "not_an_animal")


def queue_reason(reason: str, agree: bool | None, guide_kind: str | None) -> QueueReason:
    """The one rule that places a clip in the queue (the SQL stores order by the same rule)."""
    if agree is False:
        return QueueReason.DISAGREEMENT
    if reason == "flagged" or guide_kind in FLAG_KINDS:
        return QueueReason.FLAGGED
    if reason == "uncertain":
        return QueueReason.UNCERTAIN
    return QueueReason.RANDOM


@dataclass(frozen=True)
class UserRecord:
    id: int
    name: str
    role: UserRole
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def is_admin(self) -> bool:
        return self.role is UserRole.ADMIN


@dataclass(frozen=True)
class SessionRecord:
    user: UserRecord
    csrf_token: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class ReviewVerdictRecord:
    seq: int
    uuid: str
    clip_uuid: str
    reviewer: str
    verdict: ReviewVerdict
    species_code: str | None
    created_at: datetime


@dataclass(frozen=True)
class Judgement:
    """What is known about one detection: the cloud's confirmations (any agreement wins; the
    latest one's top species), the guide's latest feedback, and the latest reviewer verdict
    (skips ignored) on any of its clips. :attr:`status` is the one rule: a reviewer over the
    guide over the cloud."""

    detection_uuid: str
    species_code: str
    cloud_agree: bool | None = None
    cloud_top: str | None = None
    guide_kind: str | None = None
    guide_code: str | None = None
    review: ReviewVerdict | None = None
    review_species: str | None = None
    reviewer: str | None = None

    @property
    def verified_by(self) -> str | None:
        if self.review is not None and self.review is not ReviewVerdict.SKIP:
            return "reviewer"
        if self.guide_kind is not None:
            return "guide"
        if self.cloud_agree is not None:
            return "cloud"
        return None

    @property
    def status(self) -> DetectionStatus:
        by = self.verified_by
        if by == "reviewer":
            ok = self.review is not ReviewVerdict.NOT_AN_ANIMAL and self.review_species == self.species_code
        elif by == "guide":
            ok = self.guide_kind == "confirmed"
        elif by == "cloud":
            ok = bool(self.cloud_agree)
        else:
            return DetectionStatus.PENDING
        return DetectionStatus.CONFIRMED if ok else DetectionStatus.REJECTED

    @property
    def corrected_to(self) -> str | None:
        """For a rejected detection: the species the judge said it was ('' = not an animal,
        None = not said)."""
        if self.status is not DetectionStatus.REJECTED:
            return None
        by = self.verified_by
        if by == "reviewer":
            return "" if self.review is ReviewVerdict.NOT_AN_ANIMAL else self.review_species
        if by == "guide":
            return self.guide_code if self.guide_kind == "wrong_species" else ""
        return self.cloud_top if self.cloud_top != self.species_code else None


@dataclass(frozen=True)
class SpeciesCount:
    """Detections of one species: heard, and how many were confirmed / rejected."""

    code: str
    detections: int
    confirmed: int
    rejected: int


@dataclass(frozen=True)
class DayRate:
    """Edge/cloud comparisons of clips recorded on one UTC day."""

    day: str
    compared: int
    disagreements: int

    @property
    def rate(self) -> float | None:
        return self.disagreements / self.compared if self.compared else None


@dataclass(frozen=True)
class ConsoleOverview:
    tours_per_day: dict[str, int]  # UTC date of the tour's start → tours
    species: list[SpeciesCount]  # by code
    disagreement_per_day: list[DayRate]  # by day
    devices: list[DeviceRecord]
    review_pending: int
    counts: dict[str, int]


@dataclass(frozen=True)
class QueueFilter:
    """Review-queue filters: the species (the edge's detection or the cloud's top species), the
    device's name, recorded in ``[since, until)``, the queue reason."""

    species: str | None = None
    device: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    reason: QueueReason | None = None


@dataclass(frozen=True)
class ReviewItem:
    clip: ClipRecord
    device: str
    reason: QueueReason
    detection: DetectionRecord | None
    confirmation: ConfirmationRecord | None
    guide_kind: str | None
    guide_code: str | None
    guide_note: str | None
    verdicts: list[ReviewVerdictRecord]  # this clip's history, by seq

    @property
    def latest(self) -> ReviewVerdictRecord | None:
        return self.verdicts[-1] if self.verdicts else None


@dataclass(frozen=True)
class ReviewPage:
    items: list[ReviewItem]
    total: int  # clips in the (filtered) queue


@dataclass(frozen=True)
class TourListItem:
    uuid: str
    guide: str
    device: str
    location: str | None
    latitude: float | None
    longitude: float | None
    started_at: datetime
    ended_at: datetime | None
    detections: int
    species: int


@dataclass(frozen=True)
class TimelineEntry:
    detection: DetectionRecord
    judgement: Judgement
    clip_uuids: list[str]


@dataclass(frozen=True)
class TourClip:
    """A clip recorded on a tour (with or without a detection), the cloud's top species for it and
    the latest reviewer verdict."""

    clip: ClipRecord
    cloud_top: str | None
    latest: ReviewVerdictRecord | None


@dataclass(frozen=True)
class TourTimeline:
    tour: TourListItem
    entries: list[TimelineEntry]  # by start time
    clips: list[TourClip] = field(default_factory=list)  # by time recorded

    @property
    def species(self) -> dict[str, list[TimelineEntry]]:
        """Entries per species, in the order first heard."""
        out: dict[str, list[TimelineEntry]] = {}
        for e in self.entries:
            out.setdefault(e.detection.species_code, []).append(e)
        return out


@dataclass(frozen=True)
class SpeciesDay:
    day: str
    detections: int
    confirmed: int
    rejected: int


@dataclass(frozen=True)
class BestClip:
    clip: ClipRecord
    edge_species: str | None
    edge_confidence: float | None
    cloud_probability: float | None  # the ensemble's probability for this species, when it named it

    @property
    def score(self) -> float:
        return max(self.cloud_probability or 0.0, self.edge_confidence or 0.0)


@dataclass(frozen=True)
class Confusion:
    """Another species (``''`` = not an animal) and how often each judge named it instead."""

    code: str
    cloud: int = 0
    guide: int = 0
    reviewer: int = 0

    @property
    def total(self) -> int:
        return self.cloud + self.guide + self.reviewer


@dataclass(frozen=True)
class SpeciesPage:
    code: str
    detections: int
    per_day: list[SpeciesDay]
    best_clips: list[BestClip]
    #: the edge said this species, a judge said the other one
    confused_with: list[Confusion]
    #: the edge said the other species, a judge said this one
    mistaken_for: list[Confusion]


@dataclass(frozen=True)
class ExportRow:
    detection: DetectionRecord
    judgement: Judgement
    guide: str
    device: str
    location: str | None
    latitude: float | None
    longitude: float | None
    tour_started_at: datetime
    clip_path: str | None

    @property
    def key(self) -> tuple[datetime, str]:
        return (self.detection.start_time, self.detection.uuid)


def check_user_role(role: UserRole | str) -> UserRole:
    try:
        return UserRole(role)
    except ValueError:
        raise ValueError(f"unknown user role {role!r} (reviewer or admin)") from None


def check_verdict(verdict: ReviewVerdict | str, species_code: str | None) -> ReviewVerdict:
    try:
        v = ReviewVerdict(verdict)
    except ValueError:
        raise ValueError(
            f"unknown verdict {verdict!r} ({', '.join(x.value for x in ReviewVerdict)})"
        ) from None
    if v in (ReviewVerdict.ACCEPT, ReviewVerdict.RELABEL) and not species_code:
        raise ValueError(f"a {v} verdict needs the species_code the reviewer chose")
    if v in (ReviewVerdict.NOT_AN_ANIMAL, ReviewVerdict.SKIP) and species_code is not None:
        raise ValueError(f"a {v} verdict has no species_code (got {species_code!r})")
    return v


def same_hash(a: str, b: str) -> bool:
    """Constant-time comparison of two token hashes."""
    return hmac.compare_digest(a.encode(), b.encode())


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def species_pages(
    code: str,
    per_day_heard: dict[str, int],
    judged: list[tuple[datetime, Judgement]],
    candidates: list[tuple[ClipRecord, str | None, float | None, list[dict[str, Any]] | None]],
    others: list[Judgement],
    best: int,
) -> SpeciesPage:
    """A :class:`SpeciesPage` from what every backend reads the same way: detections per day, the
    judged detections of the species (start time, judgement), candidate clips (clip, edge
    species, edge confidence, the cloud's species list) and the judgements of other species'
    detections that name this one."""
    conf: dict[str, int] = {}
    rej: dict[str, int] = {}
    confused: dict[str, dict[str, int]] = {}
    for start, j in judged:
        day = start.date().isoformat()
        st = j.status
        if st is DetectionStatus.CONFIRMED:
            conf[day] = conf.get(day, 0) + 1
        elif st is DetectionStatus.REJECTED:
            rej[day] = rej.get(day, 0) + 1
            other = j.corrected_to
            if other is not None and other != code:
                by = j.verified_by or "cloud"
                confused.setdefault(other, {}).setdefault(by, 0)
                confused[other][by] += 1
    mistaken: dict[str, dict[str, int]] = {}
    for j in others:
        if j.species_code != code and j.status is DetectionStatus.REJECTED and j.corrected_to == code:
            by = j.verified_by or "cloud"
            mistaken.setdefault(j.species_code, {}).setdefault(by, 0)
            mistaken[j.species_code][by] += 1

    def confusions(d: dict[str, dict[str, int]]) -> list[Confusion]:
        out = [Confusion(k, **v) for k, v in d.items()]
        return sorted(out, key=lambda c: (-c.total, c.code))[:10]

    clips: dict[str, BestClip] = {}
    for clip, edge_species, edge_conf, species in candidates:
        prob = next((float(s["probability"]) for s in species or [] if s.get("code") == code), None)
        clips[clip.uuid] = BestClip(clip, edge_species, edge_conf if edge_species == code else None, prob)
    ranked = sorted(
        clips.values(), key=lambda b: (not b.clip.pinned, -b.score, b.clip.recorded_at, b.clip.uuid)
    )
    days = sorted(set(per_day_heard) | set(conf) | set(rej))
    return SpeciesPage(
        code=code,
        detections=sum(per_day_heard.values()),
        per_day=[SpeciesDay(d, per_day_heard.get(d, 0), conf.get(d, 0), rej.get(d, 0)) for d in days],
        best_clips=[b for b in ranked if b.clip.pinned]
        + [b for b in ranked if not b.clip.pinned][: max(0, best - sum(1 for b in ranked if b.clip.pinned))],
        confused_with=confusions(confused),
        mistaken_for=confusions(mistaken),
    )


def overview_species(heard: dict[str, int], judged: list[Judgement]) -> list[SpeciesCount]:
    conf: dict[str, int] = {}
    rej: dict[str, int] = {}
    for j in judged:
        st = j.status
        if st is DetectionStatus.CONFIRMED:
            conf[j.species_code] = conf.get(j.species_code, 0) + 1
        elif st is DetectionStatus.REJECTED:
            rej[j.species_code] = rej.get(j.species_code, 0) + 1
    return [SpeciesCount(c, n, conf.get(c, 0), rej.get(c, 0)) for c, n in sorted(heard.items())]


def review_items(
    uuids: list[str],
    clips: dict[str, ClipRecord],
    detections: dict[str, DetectionRecord],
    guide: dict[str, Any],
    confirmations: dict[str, ConfirmationRecord],
    verdicts: dict[str, list[ReviewVerdictRecord]],
    device_names: dict[int, str],
) -> list[ReviewItem]:
    """Review items in the order of ``uuids`` from what a backend read (``guide``: the latest
    feedback per detection UUID, a mapping with ``kind``, ``correct_code`` and ``note``)."""
    out = []
    for u in uuids:
        c = clips.get(u)
        if c is None:
            continue
        g = guide.get(c.detection_uuid or "")
        conf = confirmations.get(u)
        kind = g["kind"] if g else None
        out.append(
            ReviewItem(
                clip=c,
                device=device_names.get(c.device_id, "?"),
                reason=queue_reason(c.reason, conf.agree if conf else None, kind),
                detection=detections.get(c.detection_uuid or ""),
                confirmation=conf,
                guide_kind=kind,
                guide_code=g["correct_code"] if g else None,
                guide_note=g["note"] if g else None,
                verdicts=verdicts.get(u, []),
            )
        )
    return out


def tour_clips(
    clips: list[ClipRecord],
    confirmations: dict[str, ConfirmationRecord],
    verdicts: dict[str, list[ReviewVerdictRecord]],
) -> list[TourClip]:
    """A tour's clips by time recorded, each with the cloud's top species and the latest verdict."""
    out = []
    for c in sorted(clips, key=lambda c: (c.recorded_at, c.uuid)):
        conf = confirmations.get(c.uuid)
        mine = verdicts.get(c.uuid, [])
        top = str(conf.species[0]["code"]) if conf and conf.species else None
        out.append(TourClip(c, top, mine[-1] if mine else None))
    return out


def judge(
    cloud: Iterable[Mapping[str, Any]],
    guide: Iterable[Mapping[str, Any]],
    review: Iterable[Mapping[str, Any]],
) -> dict[str, tuple[datetime | None, Judgement]]:
    """The judgement of every detection that appears in one of the three sources, with its start
    time (None when no row carried it) — the one place that combines them, for every backend.
    Each row names the detection (``det``, ``species_code``, ``start_time``) and one source:

    * ``cloud``: a confirmation of one of its clips — ``agree`` (None: not compared), ``top`` (the
      cloud's best species), ``seq``; any agreement wins, the latest confirmation's ``top`` is kept;
    * ``guide``: a guide's feedback — ``kind``, ``correct_code``, ordered by (``created_at``,
      ``received_at``, ``uuid``), the latest wins;
    * ``review``: a non-skip reviewer verdict on one of its clips — ``verdict``, ``species``,
      ``reviewer``, ``seq``; the latest wins.
    """
    acc: dict[str, list[Any]] = {}  # det → [code, start, agree, top, top_seq, guide, gkey, review, rseq]

    def slot(r: Mapping[str, Any]) -> list[Any]:
        key = str(r["det"])
        a = acc.get(key)
        if a is None:
            a = acc[key] = [r["species_code"], r["start_time"], None, None, -1, None, None, None, -1]
        elif a[1] is None:
            a[1] = r["start_time"]
        return a

    for r in cloud:
        a = slot(r)
        agree = r["agree"]
        if agree is not None:
            a[2] = True if agree else bool(a[2])
        seq = int(r["seq"])
        if seq > a[4]:
            a[4], a[3] = seq, r["top"]
    for r in guide:
        a = slot(r)
        # raw values: ISO text (SQLite) or datetimes order the same way within one backend
        order = (r["created_at"], r["received_at"], str(r["uuid"]))
        if a[6] is None or order > a[6]:
            a[6], a[5] = order, (r["kind"], r["correct_code"])
    for r in review:
        a = slot(r)
        seq = int(r["seq"])
        if seq > a[8]:
            a[8], a[7] = seq, (r["verdict"], r["species"], r["reviewer"])
    out = {}
    for det, (code, start, agree, top, _, g, _, v, _) in acc.items():
        out[det] = (
            opt_dt(start),
            Judgement(
                det,
                code,
                agree,
                top,
                g[0] if g else None,
                g[1] if g else None,
                ReviewVerdict(v[0]) if v else None,
                v[1] if v else None,
                v[2] if v else None,
            ),
        )
    return out
