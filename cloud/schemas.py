"""The edge ↔ cloud wire format, version 2 (``WIRE_VERSION``): pydantic models validated by the cloud
on every request.

Version 2 (from 1): confidence bands are ``high | medium | low`` (v1's ``confirmed | likely |
possible`` read like the cloud's verdict); a sync batch may carry the device's status
(``DeviceStatus``); a clip's meta may carry the recording it was cut from (``source``,
``source_offset``) and the edge model's top scores (``edge_top``). Version-1 payloads are still
accepted: their band names are mapped (confirmed → high, likely → medium, possible → low).

The edge builds the same JSON with its own code (it may not import ``cloud``); ``tests/contract``
validates the edge's payloads against these models. Changing a field means a
new ``WIRE_VERSION`` and a changed contract test, in the same commit (see ``docs/contracts.md``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

WIRE_VERSION = 2
#: versions the cloud accepts (a device that has not updated yet still syncs)
ACCEPTED_WIRE_VERSIONS = (1, 2)
#: confidence bands of a detection, by the edge's score (not the cloud's verdict)
BANDS = ("high", "medium", "low")
_V1_BANDS = {"confirmed": "high", "likely": "medium", "possible": "low"}
MAX_BATCH = 500


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# What the JSON Schema of a field says is what the cloud accepts (found by Schemathesis): pydantic's
# lax mode would read ``true`` as 1 or 1.0, a number as a date-time (Unix seconds), and refuse 3.0
# for an integer, which JSON Schema calls an integer.
def _integer(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _not_a_boolean(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError("a number is required, not a boolean")
    return v


def _date_time(v: Any) -> Any:
    if isinstance(v, int | float):  # bool included
        raise ValueError("an ISO 8601 date-time string is required")
    return v


#: a finite JSON number (an integer is one), never a boolean, a string, Infinity or NaN
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
#: a JSON integer (3 or 3.0), never a boolean, a fraction or a string
Integer = Annotated[int, BeforeValidator(_integer), Field(strict=True)]
#: an ISO 8601 date-time string (or a datetime in Python), never a number
DateTime = Annotated[datetime, BeforeValidator(_date_time)]
#: the wire version of a payload (never ``true``)
Version = Annotated[Literal[1, 2], BeforeValidator(_not_a_boolean)]


class TourIn(_Strict):
    uuid: UUID
    guide: str = Field(min_length=1, max_length=200)
    location: str | None = Field(default=None, max_length=200)
    latitude: Number | None = Field(default=None, ge=-90, le=90)
    longitude: Number | None = Field(default=None, ge=-180, le=180)
    started_at: DateTime
    ended_at: DateTime | None = None


class DetectionIn(_Strict):
    uuid: UUID
    tour_uuid: UUID
    species_code: str = Field(min_length=1, max_length=40)
    start_time: DateTime
    end_time: DateTime
    confidence: Number = Field(ge=0, le=1)
    band: Literal["high", "medium", "low"]
    model_version: str = Field(max_length=200)


class DeviceStatus(_Strict):
    """What a device reports about itself with each sync (v2): shown on the console."""

    model_version: str | None = Field(default=None, max_length=200)
    app_version: str | None = Field(default=None, max_length=50)
    # strict: a JSON ``true`` is not a count (pydantic's lax mode would read it as 1)
    pending_detections: Integer = Field(default=0, ge=0)
    pending_clips: Integer = Field(default=0, ge=0)
    clips_stored: Integer = Field(default=0, ge=0)
    #: windows whose audio was not kept because the speech detector heard a person
    speech_suppressed: Integer = Field(default=0, ge=0)
    #: audio recording paused because free space fell below the watermark
    audio_paused: bool = Field(default=False, strict=True)
    free_bytes: Annotated[int, Field(ge=0, strict=True), BeforeValidator(_integer)] | None = None


class SyncBatch(_Strict):
    """``POST /v1/sync``: tours first (a detection's tour must be known), then detections."""

    wire_version: Version = 2
    tours: list[TourIn] = Field(default_factory=list, max_length=MAX_BATCH)
    detections: list[DetectionIn] = Field(default_factory=list, max_length=MAX_BATCH)
    device: DeviceStatus | None = None

    @model_validator(mode="before")
    @classmethod
    def _v1_bands(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("wire_version") == 1:
            dets = data.get("detections")
            if isinstance(dets, list):
                data = {
                    **data,
                    "detections": [
                        {**d, "band": _V1_BANDS.get(d.get("band"), d.get("band"))}
                        if isinstance(d, dict)
                        else d
                        for d in dets
                    ],
                }
        return data


class Rejected(BaseModel):
    uuid: UUID
    error: str


class SyncAck(BaseModel):
    """Every UUID of the batch appears once: accepted (new), duplicate (already stored, harmless)
    or rejected (with the reason; the device keeps it and shows the error)."""

    wire_version: int = WIRE_VERSION
    accepted: list[UUID]
    duplicates: list[UUID]
    rejected: list[Rejected]


class EdgeScore(_Strict):
    code: str = Field(min_length=1, max_length=40)
    probability: Number = Field(ge=0, le=1)


class ClipMeta(_Strict):
    """The ``meta`` part of ``POST /v1/clips`` (multipart: ``meta`` JSON + ``audio`` file)."""

    wire_version: Version = 2
    uuid: UUID
    tour_uuid: UUID | None = None
    detection_uuid: UUID | None = None
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: Integer = Field(gt=0)
    reason: Literal["random", "uncertain", "flagged"]
    recorded_at: DateTime
    start_offset: Number = Field(default=0.0, ge=0)  # seconds into the clip where the detection starts
    #: the recording the clip was cut from (file name, or "microphone") and where in it (s)
    source: str | None = Field(default=None, max_length=300)
    source_offset: Number | None = Field(default=None, ge=0)
    #: the edge model's best species for the clip's window, best first (v2)
    edge_top: list[EdgeScore] = Field(default_factory=list, max_length=10)


class SpeciesScore(BaseModel):
    code: str
    scientific_name: str
    common_name: str
    taxon_class: str
    probability: float


class Confirmation(BaseModel):
    """The full ensemble's verdict on one uploaded clip (``GET /v1/confirmations?since=SEQ``)."""

    seq: int
    clip_uuid: UUID
    detection_uuid: UUID | None
    edge_species: str | None
    agree: bool | None  # None when the clip had no detection to compare with
    species: list[SpeciesScore]
    model: str
    created_at: datetime


class ClipAck(BaseModel):
    wire_version: int = WIRE_VERSION
    uuid: UUID
    duplicate: bool
    confirmation: Confirmation | None


class FeedbackIn(_Strict):
    """A guide's flag on a detection (``POST /v1/feedback``)."""

    wire_version: Version = 2
    uuid: UUID
    detection_uuid: UUID
    kind: Literal["wrong_species", "not_an_animal", "confirmed"]
    correct_code: str | None = Field(default=None, max_length=40)
    note: str | None = Field(default=None, max_length=2000)
    created_at: DateTime


class FeedbackAck(BaseModel):
    wire_version: int = WIRE_VERSION
    uuid: UUID
    duplicate: bool


# ---------------------------------------------------------------------------------- answers
# What the service answers besides the wire acknowledgements above: documented in the OpenAPI
# document (``/docs.json``) and checked against real answers in ``tests/cloud/test_api.py``. Extra
# fields are allowed (a newer server may add one without breaking a client).


class ErrorBody(BaseModel):
    """Every error of every endpoint: the message (no server paths) and the HTTP status again."""

    error: str
    status: int = Field(ge=400, le=599)


class ModelInfo(BaseModel):
    """The model package the service scores with."""

    name: str
    version: str
    feature_fingerprint: str
    members: list[str]
    birdnet_only: bool
    note: str | None = None


class WindowResult(BaseModel):
    """One window of ``identify``: the species above the threshold, best first; with
    ``members=true`` also every member's best species."""

    start: float
    end: float
    species: list[SpeciesScore]
    members: dict[str, list[SpeciesScore]] | None = None


class IdentifySummary(BaseModel):
    """Per species the best window's probability: above the threshold (``species``) and the
    ``top_k`` best whatever their probability (``top``)."""

    species: list[SpeciesScore]
    top: list[SpeciesScore]
    windows: int


class IdentifyResult(BaseModel):
    """``POST /identify`` and ``POST /v1/identify``."""

    model: ModelInfo
    duration: float
    window_seconds: float
    stride_seconds: float
    threshold: float
    windows: list[WindowResult]
    summary: IdentifySummary


class ConfirmationsPage(BaseModel):
    """``GET /v1/confirmations``: the device's confirmations after ``since``; ``next`` is the cursor
    for the next call."""

    wire_version: int
    confirmations: list[Confirmation]
    next: int


class TourSpecies(BaseModel):
    code: str
    detections: int
    first_heard: str
    confirmed: bool
    flagged: bool
    scientific_name: str | None = None
    common_name: str | None = None
    taxon_class: str | None = None


class TourSummary(BaseModel):
    tour: str
    guide: str
    device: str
    location: str | None = None
    started_at: str
    ended_at: str | None = None
    species_heard: int
    species_confirmed: int
    species: list[TourSpecies]


class TourReport(BaseModel):
    """``GET /v1/reports/tours``: species per tour (heard, confirmed by the cloud or the guide,
    flagged)."""

    tours: list[TourSummary]


class GroupCounts(BaseModel):
    tours: int
    species_heard: int
    species_confirmed: int


class SummaryReport(BaseModel):
    """``GET /v1/reports/summary``: per day and per guide; the edge/cloud disagreement rate."""

    tours: int
    mean_species_confirmed_per_tour: float
    mean_species_heard_per_tour: float
    disagreement_rate: float | None
    confirmations: int
    per_day: dict[str, GroupCounts]
    per_guide: dict[str, GroupCounts]


class KeyRotation(BaseModel):
    """One release-key rotation: the new public key, signed by the key before it (base64 Ed25519
    over the canonical JSON of the other fields; ``shared_features.signature.KeyRotation``)."""

    old_key_id: str
    new_key_id: str
    new_public_key: str
    created_at: str
    signature: str


class ReleaseInfo(BaseModel):
    """``GET /v1/releases/current``: the edge model package devices should run, and its signature.

    ``signature`` is a base64 Ed25519 signature by key ``key_id`` over the canonical JSON of the
    release statement — ``name``, ``version``, ``sha256`` and ``bytes`` of the archive,
    ``feature_fingerprint``, ``labels_sha256``, ``thresholds_sha256``, ``signed_at``, ``key_id``
    (``shared_features.signature.ReleaseStatement``). Devices verify it against the public key they
    pinned at enrolment (or one reached from it through ``key_rotations``) before they download or
    unpack anything. ``signature`` is null only for a release published before releases were
    signed; devices refuse it."""

    version: str
    name: str | None = None
    sha256: str
    feature_fingerprint: str
    bytes: int
    metrics: dict[str, Any]
    validation: dict[str, Any]
    format: str | None = None
    created_at: str
    download: str
    labels_sha256: str | None = None
    thresholds_sha256: str | None = None
    signed_at: str | None = None
    signature: str | None = None
    key_id: str | None = None
    key_rotations: list[KeyRotation] = Field(default_factory=list)


class ReadyStatus(BaseModel):
    """``GET /v1/ready`` once the model is loaded (503 with an :class:`ErrorBody` before)."""

    ready: bool
    model: ModelInfo


class WireSchemas(BaseModel):
    """``GET /v1/schema``: the wire version and the JSON Schema of every wire model."""

    wire_version: int
    schemas: dict[str, dict[str, Any]]
