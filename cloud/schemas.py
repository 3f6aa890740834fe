"""The edge ↔ cloud wire format, version 1 (``WIRE_VERSION``): pydantic models validated by the cloud
on every request. The edge builds the same JSON with its own code (it may not import ``cloud``);
``tests/contract`` validates the edge's payloads against these models. Changing a field means a
new ``WIRE_VERSION`` and a changed contract test, in the same commit (see ``docs/contracts.md``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

WIRE_VERSION = 1
MAX_BATCH = 500


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TourIn(_Strict):
    uuid: UUID
    guide: str = Field(min_length=1, max_length=200)
    location: str | None = Field(default=None, max_length=200)
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    started_at: datetime
    ended_at: datetime | None = None


class DetectionIn(_Strict):
    uuid: UUID
    tour_uuid: UUID
    species_code: str = Field(min_length=1, max_length=40)
    start_time: datetime
    end_time: datetime
    confidence: float = Field(ge=0, le=1)
    band: Literal["confirmed", "likely", "possible"]
    model_version: str = Field(max_length=200)


class SyncBatch(_Strict):
    """``POST /v1/sync``: tours first (a detection's tour must be known), then detections."""

    wire_version: Literal[1] = 1
    tours: list[TourIn] = Field(default_factory=list, max_length=MAX_BATCH)
    detections: list[DetectionIn] = Field(default_factory=list, max_length=MAX_BATCH)


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


class ClipMeta(_Strict):
    """The ``meta`` part of ``POST /v1/clips`` (multipart: ``meta`` JSON + ``audio`` file)."""

    wire_version: Literal[1] = 1
    uuid: UUID
    tour_uuid: UUID | None = None
    detection_uuid: UUID | None = None
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(gt=0)
    reason: Literal["random", "uncertain", "flagged"]
    recorded_at: datetime
    start_offset: float = Field(default=0.0, ge=0)  # seconds into the clip where the detection starts


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

    wire_version: Literal[1] = 1
    uuid: UUID
    detection_uuid: UUID
    kind: Literal["wrong_species", "not_an_animal", "confirmed"]
    correct_code: str | None = Field(default=None, max_length=40)
    note: str | None = Field(default=None, max_length=2000)
    created_at: datetime


class FeedbackAck(BaseModel):
    wire_version: int = WIRE_VERSION
    uuid: UUID
    duplicate: bool
