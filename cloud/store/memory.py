"""The cloud store in memory: the same operations and results as the SQL stores, held in
dictionaries behind one lock. For tests, the demo and a single process (``memory://``); nothing
survives the process and nothing is shared between replicas or BentoML workers."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from cloud.errors import DeviceExists, NotFound, Unauthorized
from cloud.schemas import ClipMeta, DetectionIn, DeviceStatus, FeedbackIn, TourIn
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
    SpeciesTally,
    Summary,
    TourReport,
    as_utc,
    check_role,
    hash_token,
    refused,
    summarize,
    utcnow,
)
from cloud.store.rows import norm_uuid


@dataclass
class _Tour:
    uuid: str
    device_id: int
    guide: str
    location: str | None
    latitude: float | None
    longitude: float | None
    started_at: datetime
    ended_at: datetime | None


@dataclass(frozen=True)
class _Feedback:
    uuid: str
    device_id: int
    detection_uuid: str
    kind: str
    correct_code: str | None
    note: str | None
    created_at: datetime
    received_at: datetime
    exported_at: datetime | None = None


class MemoryCloudStore:
    """Implements :class:`cloud.store.Store` in memory (thread-safe)."""

    backend = "memory"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._devices: dict[int, DeviceRecord] = {}
        self._token_hashes: dict[str, int] = {}
        self._tours: dict[str, _Tour] = {}
        self._detections: dict[str, DetectionRecord] = {}
        self._clips: dict[str, ClipRecord] = {}
        self._confirmations: dict[str, ConfirmationRecord] = {}  # by clip uuid
        self._seq = 0
        self._feedback: dict[str, _Feedback] = {}
        self._releases: dict[str, ReleaseRecord] = {}

    def describe(self) -> str:
        return "memory:// (this process only)"

    # ---------------------------------------------------------------- migrations
    def migrate(self) -> list[str]:
        return []  # born at the latest schema

    def applied_migrations(self) -> list[str]:
        return list(MIGRATION_NAMES)

    def pending_migrations(self) -> list[str]:
        return []

    # ---------------------------------------------------------------- devices
    def add_device(self, name: str, role: Role | str = Role.DEVICE) -> str:
        r = check_role(role)
        token = secrets.token_urlsafe(32)
        with self._lock:
            if any(d.name == name for d in self._devices.values()):
                raise DeviceExists(f"a device named {name!r} exists already")
            dev_id = len(self._devices) + 1
            self._devices[dev_id] = DeviceRecord(dev_id, name, r, utcnow())
            self._token_hashes[hash_token(token)] = dev_id
        return token

    def authenticate(self, token: str | None, role: Role | str = Role.DEVICE) -> DeviceRecord:
        want = check_role(role)
        if not token:
            raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
        with self._lock:
            dev_id = self._token_hashes.get(hash_token(token))
            dev = self._devices.get(dev_id) if dev_id is not None else None
        if dev is None or (want is Role.ADMIN and dev.role is not Role.ADMIN):
            raise Unauthorized(f"invalid {want} token")
        if dev.revoked:
            raise Unauthorized(f"{dev.role} {dev.name!r} was revoked")
        return dev

    def revoke_device(self, name: str) -> DeviceRecord:
        with self._lock:
            dev = next((d for d in self._devices.values() if d.name == name), None)
            if dev is None:
                raise NotFound(f"no device named {name!r}")
            if not dev.revoked:
                dev = replace(dev, revoked_at=utcnow())
                self._devices[dev.id] = dev
            return dev

    def devices(self) -> list[DeviceRecord]:
        with self._lock:
            return sorted(self._devices.values(), key=lambda d: d.name)

    # ---------------------------------------------------------------- sync
    def ingest(
        self,
        device_id: int,
        tours: Sequence[TourIn],
        detections: Sequence[DetectionIn],
        status: DeviceStatus | None = None,
    ) -> IngestReport:
        now = utcnow()
        out_t: list[Ingested] = []
        out_d: list[Ingested] = []
        with self._lock:
            for t in tours:
                uid = str(t.uuid)
                old = self._tours.get(uid)
                if old is None:
                    self._tours[uid] = _Tour(
                        uid,
                        device_id,
                        t.guide,
                        t.location,
                        t.latitude,
                        t.longitude,
                        as_utc(t.started_at),
                        None if t.ended_at is None else as_utc(t.ended_at),
                    )
                    out_t.append(Ingested(uid, IngestResult.ACCEPTED))
                elif old.device_id != device_id:
                    out_t.append(refused(uid, IngestResult.NOT_OWNER, uid))
                else:
                    if t.ended_at is not None:
                        old.ended_at = as_utc(t.ended_at)
                    out_t.append(Ingested(uid, IngestResult.DUPLICATE))
            for d in detections:
                uid, tour_uuid = str(d.uuid), str(d.tour_uuid)
                had = self._detections.get(uid)
                tour = self._tours.get(tour_uuid)
                if had is not None:
                    out_d.append(
                        Ingested(uid, IngestResult.DUPLICATE)
                        if had.device_id == device_id
                        else refused(uid, IngestResult.NOT_OWNER)
                    )
                elif tour is None:
                    out_d.append(refused(uid, IngestResult.UNKNOWN_TOUR, tour_uuid))
                elif tour.device_id != device_id:
                    out_d.append(refused(uid, IngestResult.NOT_OWNER, tour_uuid))
                else:
                    self._detections[uid] = DetectionRecord(
                        uid,
                        device_id,
                        tour_uuid,
                        d.species_code,
                        as_utc(d.start_time),
                        as_utc(d.end_time),
                        d.confidence,
                        d.band,
                        d.model_version,
                        now,
                    )
                    out_d.append(Ingested(uid, IngestResult.ACCEPTED))
            dev = self._devices[device_id]
            self._devices[device_id] = replace(
                dev,
                last_sync_at=now,
                status=status.model_copy() if status is not None else dev.status,
            )
        return IngestReport(out_t, out_d)

    def detection(self, device_id: int, uuid: str) -> DetectionRecord | None:
        with self._lock:
            d = self._detections.get(norm_uuid(uuid) or "")
        return d if d is not None and d.device_id == device_id else None

    # ---------------------------------------------------------------- clips
    def add_clip(self, device_id: int, meta: ClipMeta, path: str) -> ClipResult:
        uid = str(meta.uuid)
        with self._lock:
            for owner in (
                self._tours.get(str(meta.tour_uuid)) if meta.tour_uuid else None,
                self._detections.get(str(meta.detection_uuid)) if meta.detection_uuid else None,
            ):
                if owner is not None and owner.device_id != device_id:
                    return ClipResult.NOT_OWNER
            had = self._clips.get(uid)
            if had is not None:
                return ClipResult.DUPLICATE if had.device_id == device_id else ClipResult.NOT_OWNER
            self._clips[uid] = ClipRecord(
                uuid=uid,
                device_id=device_id,
                tour_uuid=None if meta.tour_uuid is None else str(meta.tour_uuid),
                detection_uuid=None if meta.detection_uuid is None else str(meta.detection_uuid),
                sha256=meta.sha256,
                bytes=meta.bytes,
                reason=meta.reason,
                recorded_at=as_utc(meta.recorded_at),
                start_offset=meta.start_offset,
                path=path,
                received_at=utcnow(),
                source=meta.source,
                source_offset=meta.source_offset,
                edge_top=[e.model_copy() for e in meta.edge_top],
            )
            return ClipResult.ACCEPTED

    def clip(self, uuid: str) -> ClipRecord | None:
        with self._lock:
            return self._clips.get(norm_uuid(uuid) or "")

    def clips(self, *, tour_uuid: str | None = None, limit: int = 200) -> list[ClipRecord]:
        tour = None if tour_uuid is None else norm_uuid(tour_uuid) or "-"
        with self._lock:
            rows = [c for c in self._clips.values() if tour is None or c.tour_uuid == tour]
        return sorted(rows, key=lambda c: (c.received_at, c.uuid), reverse=True)[:limit]

    # ---------------------------------------------------------------- confirmations
    def confirm(self, new: NewConfirmation) -> ConfirmationRecord:
        with self._lock:
            had = self._confirmations.get(new.clip_uuid)
            if had is not None:
                return had
            if new.clip_uuid not in self._clips:
                raise NotFound(f"clip {new.clip_uuid} is not stored")
            self._seq += 1
            rec = ConfirmationRecord(
                self._seq,
                new.clip_uuid,
                new.device_id,
                new.detection_uuid,
                new.edge_species,
                new.agree,
                list(new.species),
                new.model,
                utcnow(),
            )
            self._confirmations[new.clip_uuid] = rec
            return rec

    def confirmation(self, clip_uuid: str) -> ConfirmationRecord | None:
        with self._lock:
            return self._confirmations.get(norm_uuid(clip_uuid) or "")

    def confirmations_since(self, device_id: int, since: int, limit: int = 200) -> list[ConfirmationRecord]:
        with self._lock:
            rows = [c for c in self._confirmations.values() if c.device_id == device_id and c.seq > since]
        return sorted(rows, key=lambda c: c.seq)[:limit]

    # ---------------------------------------------------------------- feedback
    def feedback(self, device_id: int, fb: FeedbackIn) -> FeedbackResult:
        uid = str(fb.uuid)
        with self._lock:
            det = self._detections.get(str(fb.detection_uuid))
            if det is None:
                return FeedbackResult.UNKNOWN_DETECTION
            if det.device_id != device_id:
                return FeedbackResult.NOT_OWNER
            had = self._feedback.get(uid)
            if had is not None:
                return FeedbackResult.DUPLICATE if had.device_id == device_id else FeedbackResult.NOT_OWNER
            self._feedback[uid] = _Feedback(
                uid,
                device_id,
                str(fb.detection_uuid),
                fb.kind,
                fb.correct_code,
                fb.note,
                as_utc(fb.created_at),
                utcnow(),
            )
            return FeedbackResult.ACCEPTED

    def relabel_queue(self, include_exported: bool = False) -> list[RelabelItem]:
        out = []
        with self._lock:
            for f in sorted(self._feedback.values(), key=lambda f: (f.received_at, f.uuid)):
                if f.exported_at is not None and not include_exported:
                    continue
                det = self._detections.get(f.detection_uuid)
                found = sorted(
                    (c for c in self._clips.values() if c.detection_uuid == f.detection_uuid),
                    key=lambda c: (c.received_at, c.uuid),
                )
                clips: list[ClipRecord | None] = [*found] or [None]
                for c in clips:
                    out.append(
                        RelabelItem(
                            feedback_uuid=f.uuid,
                            device_id=f.device_id,
                            detection_uuid=f.detection_uuid,
                            kind=f.kind,
                            correct_code=f.correct_code,
                            note=f.note,
                            created_at=f.created_at,
                            received_at=f.received_at,
                            exported_at=f.exported_at,
                            edge_species=det.species_code if det else None,
                            tour_uuid=det.tour_uuid if det else None,
                            clip_uuid=c.uuid if c else None,
                            clip_path=c.path if c else None,
                            start_offset=c.start_offset if c else None,
                        )
                    )
        return out

    def mark_exported(self, feedback_uuids: Sequence[str]) -> int:
        n, now = 0, utcnow()
        with self._lock:
            for u in {norm_uuid(u) for u in feedback_uuids}:
                f = self._feedback.get(u or "")
                if f is not None:
                    self._feedback[f.uuid] = replace(f, exported_at=now)
                    n += 1
        return n

    # ---------------------------------------------------------------- reports
    def tour_report(self, tour_uuid: str | None = None) -> list[TourReport]:
        with self._lock:
            if tour_uuid is not None:
                one = self._tours.get(norm_uuid(tour_uuid) or "")
                tours = [one] if one is not None else []
            else:
                tours = list(self._tours.values())
            agree = {c.detection_uuid for c in self._confirmations.values() if c.agree}
            kinds: dict[str, set[str]] = {}
            for f in self._feedback.values():
                kinds.setdefault(f.detection_uuid, set()).add(f.kind)
            by_tour: dict[str, list[DetectionRecord]] = {}
            for d in self._detections.values():
                by_tour.setdefault(d.tour_uuid, []).append(d)
            out = []
            for t in sorted(tours, key=lambda t: (t.started_at, t.uuid)):
                groups: dict[str, list[DetectionRecord]] = {}
                for d in by_tour.get(t.uuid, []):
                    groups.setdefault(d.species_code, []).append(d)
                species = [
                    SpeciesTally(
                        code=code,
                        detections=len(ds),
                        first_heard=min(d.start_time for d in ds),
                        cloud_agree=any(d.uuid in agree for d in ds),
                        guide_confirmed=any("confirmed" in kinds.get(d.uuid, ()) for d in ds),
                        flagged=any(
                            kinds.get(d.uuid, set()) & {"wrong_species", "not_an_animal"} for d in ds
                        ),
                    )
                    for code, ds in groups.items()
                ]
                species.sort(key=lambda s: (s.first_heard, s.code))
                out.append(
                    TourReport(
                        t.uuid,
                        t.guide,
                        self._devices[t.device_id].name,
                        t.location,
                        t.latitude,
                        t.longitude,
                        t.started_at,
                        t.ended_at,
                        species,
                    )
                )
            return out

    def summary(self) -> Summary:
        with self._lock:
            confs = list(self._confirmations.values())
            stats = ConfirmationStats(
                confirmations=len(confs),
                compared=sum(1 for c in confs if c.agree is not None),
                disagreements=sum(1 for c in confs if c.agree is False),
            )
            return summarize(self.tour_report(), stats)

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
        if signature is not None:  # a copy, as the SQL stores' columns would hold it
            signature = ReleaseSignature(
                signature.signature,
                signature.key_id,
                json.loads(json.dumps(signature.statement)),
                [dict(r) for r in signature.key_rotations],
            )
        with self._lock:
            for v, r in self._releases.items():
                if r.current:
                    self._releases[v] = replace(r, current=False)
            rec = ReleaseRecord(
                version, sha256, feature_fingerprint, path, dict(manifest), utcnow(), True, signature
            )
            self._releases[version] = rec
            return rec

    def current_release(self) -> ReleaseRecord | None:
        with self._lock:
            return next((r for r in self._releases.values() if r.current), None)

    def releases(self) -> list[ReleaseRecord]:
        with self._lock:
            return sorted(self._releases.values(), key=lambda r: (r.created_at, r.version))

    # ---------------------------------------------------------------- misc
    def counts(self) -> dict[str, int]:
        with self._lock:
            sizes = {
                "devices": len(self._devices),
                "tours": len(self._tours),
                "detections": len(self._detections),
                "clips": len(self._clips),
                "confirmations": len(self._confirmations),
                "feedback": len(self._feedback),
                "releases": len(self._releases),
            }
        return {k: sizes[k] for k in COUNTED}

    def close(self) -> None:
        pass
