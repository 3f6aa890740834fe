"""The edge store's vocabulary: what its named operations take and return (frozen dataclasses and
string enums). Callers never see a row, a connection or SQL; both store implementations
(:mod:`edge.store`, :mod:`edge.store_memory`) return these.

Two verdicts are kept apart on purpose:

* ``Detection.status`` is the **cloud's** verdict (:class:`DetectionStatus`: pending until a
  confirmation came back, then confirmed or disputed);
* ``Detection.guide_verdict`` is the **guide's** own flag (:class:`GuideVerdict`), or None.

And one definition of "pending" (:class:`SyncState`): a detection is *pending* when it is closed,
not acknowledged by the cloud and not rejected by it; *open* while its event is still being
extended; *rejected* when the cloud refused it (``sync_error`` says why; it is never re-sent);
*synced* once acknowledged. Sync sends exactly the pending ones; status and TUI count exactly those.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class DetectionStatus(StrEnum):
    """The cloud ensemble's verdict on a detection."""

    PENDING = "pending"
    CONFIRMED = "confirmed"
    DISPUTED = "disputed"


class GuideVerdict(StrEnum):
    """A guide's feedback on a detection (also the wire's ``FeedbackIn.kind``)."""

    CONFIRMED = "confirmed"
    WRONG_SPECIES = "wrong_species"
    NOT_AN_ANIMAL = "not_an_animal"


class ClipReason(StrEnum):
    RANDOM = "random"
    UNCERTAIN = "uncertain"
    FLAGGED = "flagged"


class StartBasis(StrEnum):
    """Where a recording's start time came from."""

    FILE_NAME = "file_name"  # SITE_YYYYMMDD_HHMMSS (BirdCLEF) or YYYYMMDD_HHMMSS (AudioMoth)
    FLAG = "flag"  # --start
    MTIME = "mtime"  # the file's modification time (last resort)
    CLOCK = "clock"  # live audio: the device clock when the stream started


class SyncState(StrEnum):
    OPEN = "open"
    PENDING = "pending"
    REJECTED = "rejected"
    SYNCED = "synced"


class ConfirmationResult(StrEnum):
    """What :meth:`Store.apply_confirmation` did with one confirmation from the cloud."""

    APPLIED = "applied"  # the detection's status changed (or was re-stated)
    NO_DETECTION = "no_detection"  # the clip was not linked to a detection: nothing to change
    NO_VERDICT = "no_verdict"  # the cloud could not compare (agree is null)
    UNKNOWN_DETECTION = "unknown_detection"  # not a detection of this device


class Counter(StrEnum):
    """Persistent counters of the device (shown by ``edge status``, sent in ``DeviceStatus``)."""

    SPEECH_SUPPRESSED = "speech_suppressed"  # windows whose audio was not kept: a person spoke
    CLIPS_SKIPPED_BUDGET = "clips_skipped_budget"
    CLIPS_SKIPPED_SPACE = "clips_skipped_space"  # free space below the watermark, or disk full


# ---------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class NewTour:
    guide: str
    location: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    started_at: str | None = None  # ISO 8601; None: now


@dataclass(frozen=True)
class NewRecording:
    tour_uuid: str
    source: str  # the file name, or "microphone"
    started_at: str  # ISO 8601 with offset
    start_basis: StartBasis
    path: str | None = None


@dataclass(frozen=True)
class NewDetection:
    tour_uuid: str
    species_code: str
    start_time: str
    end_time: str
    offset_start: float  # seconds into its recording
    offset_end: float
    confidence: float
    band: str
    model_version: str
    recording_uuid: str | None = None
    scientific_name: str | None = None
    common_name: str | None = None
    taxon_class: str | None = None
    uuid: str | None = None


@dataclass(frozen=True)
class EdgeScore:
    code: str
    probability: float


@dataclass(frozen=True)
class NewClip:
    path: str
    sha256: str
    bytes: int
    reason: ClipReason
    tour_uuid: str | None = None
    detection_uuid: str | None = None
    recording_uuid: str | None = None
    start_offset: float = 0.0  # seconds into the clip where its detection starts
    source: str | None = None  # the recording it was cut from
    source_offset: float | None = None  # where in that recording the clip starts (s)
    duration_s: float | None = None
    edge_top: tuple[EdgeScore, ...] = ()
    recorded_at: str | None = None
    uuid: str | None = None


@dataclass(frozen=True)
class Confirmation:
    """The part of the cloud's ``Confirmation`` the device keeps."""

    detection_uuid: str | None
    agree: bool | None
    species: tuple[CloudScore, ...] = ()
    clip_uuid: str | None = None
    seq: int | None = None

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Confirmation:
        return cls(
            detection_uuid=None if d.get("detection_uuid") is None else str(d["detection_uuid"]),
            agree=d.get("agree"),
            species=tuple(CloudScore.from_wire(s) for s in d.get("species") or ()),
            clip_uuid=None if d.get("clip_uuid") is None else str(d["clip_uuid"]),
            seq=d.get("seq"),
        )


@dataclass(frozen=True)
class CloudScore:
    code: str
    probability: float
    scientific_name: str = ""
    common_name: str = ""
    taxon_class: str = ""

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> CloudScore:
        return cls(
            code=str(d["code"]),
            probability=float(d["probability"]),
            scientific_name=str(d.get("scientific_name") or ""),
            common_name=str(d.get("common_name") or ""),
            taxon_class=str(d.get("taxon_class") or ""),
        )


def scores_to_json(scores: tuple[CloudScore, ...] | tuple[EdgeScore, ...]) -> str:
    return json.dumps([s.__dict__ for s in scores])


def cloud_scores_from_json(text: str | None) -> tuple[CloudScore, ...]:
    return tuple(CloudScore.from_wire(d) for d in json.loads(text)) if text else ()


def edge_scores_from_json(text: str | None) -> tuple[EdgeScore, ...]:
    return tuple(EdgeScore(str(d["code"]), float(d["probability"])) for d in json.loads(text)) if text else ()


# ---------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Tour:
    uuid: str
    guide: str
    location: str | None
    latitude: float | None
    longitude: float | None
    started_at: str
    ended_at: str | None
    synced_at: str | None


@dataclass(frozen=True)
class TourSummary:
    tour: Tour
    detections: int
    species: int


@dataclass(frozen=True)
class Recording:
    uuid: str
    tour_uuid: str
    source: str
    path: str | None
    started_at: str
    start_basis: StartBasis
    duration_s: float | None
    warning: str | None


@dataclass(frozen=True)
class Detection:
    uuid: str
    tour_uuid: str
    recording_uuid: str | None
    species_code: str
    scientific_name: str | None
    common_name: str | None
    taxon_class: str | None
    start_time: str
    end_time: str
    offset_start: float
    offset_end: float
    confidence: float
    band: str
    model_version: str
    status: DetectionStatus
    guide_verdict: GuideVerdict | None
    closed: bool
    cloud_species: tuple[CloudScore, ...]
    synced_at: str | None
    sync_error: str | None
    created_at: str

    @property
    def sync_state(self) -> SyncState:
        """The one definition of pending (the SQL store's ``PENDING_DETECTION`` says the same)."""
        if self.synced_at is not None:
            return SyncState.SYNCED
        if self.sync_error is not None:
            return SyncState.REJECTED
        if not self.closed:
            return SyncState.OPEN
        return SyncState.PENDING


@dataclass(frozen=True)
class Clip:
    uuid: str
    tour_uuid: str | None
    detection_uuid: str | None
    recording_uuid: str | None
    path: str
    sha256: str
    bytes: int
    reason: ClipReason
    start_offset: float
    source: str | None
    source_offset: float | None
    duration_s: float | None
    edge_top: tuple[EdgeScore, ...]
    recorded_at: str
    synced_at: str | None
    evicted_at: str | None
    sync_error: str | None


@dataclass(frozen=True)
class Feedback:
    uuid: str
    detection_uuid: str
    kind: GuideVerdict
    correct_code: str | None
    note: str | None
    created_at: str
    synced_at: str | None


@dataclass(frozen=True)
class ModelRecord:
    version: str
    path: str
    sha256: str
    feature_fingerprint: str
    installed_at: str
    shadow: dict[str, Any] | None
    active: bool
    previous: bool


@dataclass(frozen=True)
class Pending:
    """What the next sync would send (``detections``, ``clips``, ``feedback``, ``tours``) and what
    it never will (``rejected_*``: the cloud refused them; ``open_detections``: still calling)."""

    detections: int = 0
    clips: int = 0
    feedback: int = 0
    tours: int = 0
    open_detections: int = 0
    rejected_detections: int = 0
    rejected_clips: int = 0

    @property
    def total(self) -> int:
        """Items waiting for a sync (the rejected and the open ones are not waiting)."""
        return self.detections + self.clips + self.feedback + self.tours


@dataclass(frozen=True)
class SpeciesCount:
    code: str
    detections: int
    first: str
    last: str
    confirmed: int  # detections the cloud confirmed
    disputed: int


@dataclass(frozen=True)
class SyncBatchRows:
    """One batch for ``POST /v1/sync``: the unsynced tours and up to ``limit`` pending detections."""

    tours: list[Tour] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.tours and not self.detections


@dataclass(frozen=True)
class SyncMarks:
    """The cloud's answer to a batch, as the store applies it."""

    tours: list[str]  # acknowledged tour UUIDs (accepted or duplicate)
    detections: list[str]  # acknowledged detection UUIDs
    rejected: dict[str, str]  # detection UUID → the cloud's reason


@dataclass(frozen=True)
class SyncInfo:
    last_sync: str | None
    last_error_at: str | None
    confirmations_cursor: int


@dataclass(frozen=True)
class AudioPause:
    """Why clips are not written right now (None: they are)."""

    reason: str
    since: str


@dataclass(frozen=True)
class ExportRow:
    detection: Detection
    tour: Tour
    recording: Recording | None
    clip_path: str | None
