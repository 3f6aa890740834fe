"""Database rows → typed records, shared by the SQLite and PostgreSQL stores (their columns have
the same names; SQLite gives text, integers and JSON text where PostgreSQL gives ``uuid``,
``timestamptz``, ``boolean`` and ``jsonb``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from cloud.schemas import DeviceStatus, EdgeScore
from cloud.store.interface import (
    ClipRecord,
    ConfirmationRecord,
    DetectionRecord,
    DeviceRecord,
    RelabelItem,
    ReleaseRecord,
    ReleaseSignature,
    ReviewVerdict,
    ReviewVerdictRecord,
    Role,
    SessionRecord,
    SpeciesTally,
    TourListItem,
    TourReport,
    UserRecord,
    UserRole,
    from_json,
    opt_dt,
    opt_str,
    to_dt,
)
from shared_features.signature import canonical_json

Row = Mapping[str, Any]


def norm_uuid(value: str | UUID | None) -> str | None:
    """The canonical text of a UUID, or None for something that is not one (an unknown key)."""
    if value is None:
        return None
    try:
        return str(value if isinstance(value, UUID) else UUID(str(value)))
    except ValueError:
        return None


def opt_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def device(r: Row) -> DeviceRecord:
    status = from_json(r.get("status_json"))
    return DeviceRecord(
        id=int(r["id"]),
        name=r["name"],
        role=Role(r["role"]),
        created_at=to_dt(r["created_at"]),
        revoked_at=opt_dt(r.get("revoked_at")),
        last_sync_at=opt_dt(r.get("last_sync_at")),
        status=None if status is None else DeviceStatus.model_validate(status),
    )


def detection(r: Row) -> DetectionRecord:
    return DetectionRecord(
        uuid=str(r["uuid"]),
        device_id=int(r["device_id"]),
        tour_uuid=str(r["tour_uuid"]),
        species_code=r["species_code"],
        start_time=to_dt(r["start_time"]),
        end_time=to_dt(r["end_time"]),
        confidence=float(r["confidence"]),
        band=r["band"],
        model_version=r["model_version"],
        received_at=to_dt(r["received_at"]),
    )


def clip(r: Row) -> ClipRecord:
    return ClipRecord(
        uuid=str(r["uuid"]),
        device_id=int(r["device_id"]),
        tour_uuid=opt_str(r["tour_uuid"]),
        detection_uuid=opt_str(r["detection_uuid"]),
        sha256=r["sha256"],
        bytes=int(r["bytes"]),
        reason=r["reason"],
        recorded_at=to_dt(r["recorded_at"]),
        start_offset=float(r["start_offset"] or 0.0),
        path=r["path"],
        received_at=to_dt(r["received_at"]),
        source=r.get("source"),
        source_offset=None if r.get("source_offset") is None else float(r["source_offset"]),
        edge_top=[EdgeScore.model_validate(e) for e in from_json(r.get("edge_top_json")) or []],
        pinned=bool(r.get("pinned") or False),
    )


def confirmation(r: Row) -> ConfirmationRecord:
    return ConfirmationRecord(
        seq=int(r["seq"]),
        clip_uuid=str(r["clip_uuid"]),
        device_id=int(r["device_id"]),
        detection_uuid=opt_str(r["detection_uuid"]),
        edge_species=r["edge_species"],
        agree=opt_bool(r["agree"]),
        species=from_json(r["species_json"]),
        model=r["model"],
        created_at=to_dt(r["created_at"]),
    )


def relabel(r: Row) -> RelabelItem:
    return RelabelItem(
        feedback_uuid=str(r["feedback_uuid"]),
        device_id=int(r["device_id"]),
        detection_uuid=str(r["detection_uuid"]),
        kind=r["kind"],
        correct_code=r["correct_code"],
        note=r["note"],
        created_at=to_dt(r["created_at"]),
        received_at=to_dt(r["received_at"]),
        exported_at=opt_dt(r["exported_at"]),
        edge_species=r["edge_species"],
        tour_uuid=opt_str(r["tour_uuid"]),
        clip_uuid=opt_str(r["clip_uuid"]),
        clip_path=r["clip_path"],
        start_offset=None if r["start_offset"] is None else float(r["start_offset"]),
    )


def release(r: Row) -> ReleaseRecord:
    sig = None
    if r.get("signature"):
        sig = ReleaseSignature(
            signature=r["signature"],
            key_id=r["key_id"],
            statement=from_json(r["statement_json"]),
            key_rotations=from_json(r.get("key_rotations_json")) or [],
        )
    return ReleaseRecord(
        version=r["version"],
        sha256=r["sha256"],
        feature_fingerprint=r["feature_fingerprint"],
        path=r["path"],
        manifest=from_json(r["manifest_json"]),
        created_at=to_dt(r["created_at"]),
        current=bool(r["current"]),
        signature=sig,
    )


def signature_columns(sig: ReleaseSignature | None) -> tuple[str | None, str | None, str | None, str | None]:
    """(signature, key_id, statement_json, key_rotations_json) of a release row. The statement is
    stored as its canonical JSON text (the bytes that were signed), never re-encoded."""
    if sig is None:
        return None, None, None, None
    return (
        sig.signature,
        sig.key_id,
        canonical_json(sig.statement).decode("ascii"),
        json.dumps(sig.key_rotations),
    )


def tour_reports(tours: list[dict[str, Any]], species: list[dict[str, Any]]) -> list[TourReport]:
    """Tour reports from the tour rows (with the device's name) and their per-species rows."""
    per: dict[str, list[SpeciesTally]] = {}
    for s in species:
        per.setdefault(str(s["tour_uuid"]), []).append(
            SpeciesTally(
                code=s["code"],
                detections=int(s["detections"]),
                first_heard=to_dt(s["first_heard"]),
                cloud_agree=bool(s["cloud_agree"]),
                guide_confirmed=bool(s["guide_ok"]),
                flagged=bool(s["flagged"]),
            )
        )
    out = []
    for t in tours:
        tally = sorted(per.get(str(t["uuid"]), []), key=lambda s: (s.first_heard, s.code))
        out.append(
            TourReport(
                uuid=str(t["uuid"]),
                guide=t["guide"],
                device=t["device"],
                location=t["location"],
                latitude=t["latitude"],
                longitude=t["longitude"],
                started_at=to_dt(t["started_at"]),
                ended_at=None if t["ended_at"] is None else to_dt(t["ended_at"]),
                species=tally,
            )
        )
    return out


# ====================================================================================== console
def user(r: Row) -> UserRecord:
    return UserRecord(
        id=int(r["id"]),
        name=r["name"],
        role=UserRole(r["role"]),
        created_at=to_dt(r["created_at"]),
        revoked_at=opt_dt(r.get("revoked_at")),
    )


def session(r: Row) -> SessionRecord:
    """A session row joined with its user's columns (``user_*``)."""
    return SessionRecord(
        user=UserRecord(
            id=int(r["user_id"]),
            name=r["user_name"],
            role=UserRole(r["user_role"]),
            created_at=to_dt(r["user_created_at"]),
            revoked_at=opt_dt(r.get("user_revoked_at")),
        ),
        csrf_token=r["csrf_token"],
        created_at=to_dt(r["created_at"]),
        expires_at=to_dt(r["expires_at"]),
    )


def verdict(r: Row) -> ReviewVerdictRecord:
    return ReviewVerdictRecord(
        seq=int(r["seq"]),
        uuid=str(r["uuid"]),
        clip_uuid=str(r["clip_uuid"]),
        reviewer=r["reviewer"],
        verdict=ReviewVerdict(r["verdict"]),
        species_code=r["species_code"],
        created_at=to_dt(r["created_at"]),
    )


def tour_item(r: Row) -> TourListItem:
    return TourListItem(
        uuid=str(r["uuid"]),
        guide=r["guide"],
        device=r["device"],
        location=r["location"],
        latitude=r["latitude"],
        longitude=r["longitude"],
        started_at=to_dt(r["started_at"]),
        ended_at=opt_dt(r["ended_at"]),
        detections=int(r["n_detections"] or 0),
        species=int(r["n_species"] or 0),
    )
