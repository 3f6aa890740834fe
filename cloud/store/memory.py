"""The cloud store in memory: the same operations and results as the SQL stores, held in
dictionaries behind one lock. For tests, the demo and a single process (``memory://``); nothing
survives the process and nothing is shared between replicas or BentoML workers."""

from __future__ import annotations

import json
import secrets
import threading
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from cloud.errors import DeviceExists, NotFound, Unauthorized, UserExists
from cloud.schemas import ClipMeta, DetectionIn, DeviceStatus, FeedbackIn, TourIn
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
    SpeciesTally,
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
    hash_token,
    judge,
    new_secret,
    overview_species,
    refused,
    review_items,
    same_hash,
    species_pages,
    summarize,
    tour_clips,
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


@dataclass(frozen=True)
class _Session:
    user_id: int
    csrf_token: str
    created_at: datetime
    expires_at: datetime


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
        # console
        self._users: dict[int, UserRecord] = {}
        self._user_hashes: dict[str, int] = {}
        self._sessions: dict[str, _Session] = {}  # by the session id's hash
        self._verdicts: list[ReviewVerdictRecord] = []

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

    # ================================================================ console (cloud/console/)
    # ---------------------------------------------------------------- users
    def add_user(self, name: str, role: UserRole | str) -> str:
        r = check_user_role(role)
        if not name.strip():
            raise ValueError("a user needs a name")
        token = new_secret()
        with self._lock:
            if any(u.name == name for u in self._users.values()):
                raise UserExists(f"a console user named {name!r} exists already")
            uid = len(self._users) + 1
            self._users[uid] = UserRecord(uid, name, r, utcnow())
            self._user_hashes[hash_token(token)] = uid
        return token

    def authenticate_user(self, token: str | None) -> UserRecord:
        if not token:
            raise Unauthorized("missing login token")
        digest = hash_token(token)
        with self._lock:
            found = next((h for h in self._user_hashes if same_hash(h, digest)), None)
            user = self._users[self._user_hashes[found]] if found is not None else None
        if user is None:
            raise Unauthorized("invalid login token")
        if user.revoked:
            raise Unauthorized(f"user {user.name!r} was revoked")
        return user

    def revoke_user(self, name: str) -> UserRecord:
        with self._lock:
            user = next((u for u in self._users.values() if u.name == name), None)
            if user is None:
                raise NotFound(f"no console user named {name!r}")
            if not user.revoked:
                user = replace(user, revoked_at=utcnow())
                self._users[user.id] = user
            for k in [k for k, s in self._sessions.items() if s.user_id == user.id]:
                del self._sessions[k]
            return user

    def users(self) -> list[UserRecord]:
        with self._lock:
            return sorted(self._users.values(), key=lambda u: u.name)

    # ---------------------------------------------------------------- sessions
    def create_session(self, user_id: int, ttl_s: float) -> tuple[str, str]:
        sid, csrf = new_secret(), new_secret()
        now = utcnow()
        with self._lock:
            if user_id not in self._users:
                raise NotFound(f"no console user with id {user_id}")
            for k in [k for k, s in self._sessions.items() if s.expires_at <= now]:
                del self._sessions[k]
            self._sessions[hash_token(sid)] = _Session(user_id, csrf, now, now + timedelta(seconds=ttl_s))
        return sid, csrf

    def session(self, session_id: str | None) -> SessionRecord | None:
        if not session_id:
            return None
        digest = hash_token(session_id)
        with self._lock:
            s = self._sessions.get(digest)
            user = self._users.get(s.user_id) if s is not None else None
        if s is None or user is None or user.revoked or s.expires_at <= utcnow():
            return None
        return SessionRecord(user, s.csrf_token, s.created_at, s.expires_at)

    def delete_session(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(hash_token(session_id), None)

    # ---------------------------------------------------------------- reviewers' verdicts
    def add_review_verdict(
        self, clip_uuid: str, reviewer: str, verdict: ReviewVerdict | str, species_code: str | None
    ) -> ReviewVerdictRecord:
        v = check_verdict(verdict, species_code)
        with self._lock:
            key = norm_uuid(clip_uuid) or ""
            if key not in self._clips:
                raise NotFound(f"clip {clip_uuid} is not stored")
            rec = ReviewVerdictRecord(
                seq=len(self._verdicts) + 1,
                uuid=str(uuidlib.uuid4()),
                clip_uuid=key,
                reviewer=reviewer,
                verdict=v,
                species_code=species_code,
                created_at=utcnow(),
            )
            self._verdicts.append(rec)
            return rec

    def review_verdicts(self, since_seq: int = 0) -> list[ReviewVerdictRecord]:
        with self._lock:
            return [v for v in self._verdicts if v.seq > since_seq]

    # ---------------------------------------------------------------- pins and releases
    def pin_clip(self, clip_uuid: str, pinned: bool) -> ClipRecord:
        with self._lock:
            c = self._clips.get(norm_uuid(clip_uuid) or "")
            if c is None:
                raise NotFound(f"clip {clip_uuid} is not stored")
            c = replace(c, pinned=bool(pinned))
            self._clips[c.uuid] = c
            return c

    def set_current_release(self, version: str) -> ReleaseRecord:
        with self._lock:
            if version not in self._releases:
                raise NotFound(f"no release {version!r}")
            for v, r in self._releases.items():
                self._releases[v] = replace(r, current=v == version)
            return self._releases[version]

    # ---------------------------------------------------------------- console pages (reads)
    def _judge(self, dets: list[DetectionRecord]) -> list[Judgement]:
        """The judgement of each detection (:func:`interface.judge`); call under the lock."""
        want = {d.uuid: d for d in dets}

        def row(det: str, **kw: Any) -> dict[str, Any]:
            d = want[det]
            return {"det": det, "species_code": d.species_code, "start_time": d.start_time, **kw}

        cloud = [
            row(c.detection_uuid, agree=c.agree, top=c.species[0]["code"] if c.species else None, seq=c.seq)
            for c in self._confirmations.values()
            if c.detection_uuid in want
        ]
        guide = [
            row(
                f.detection_uuid,
                kind=f.kind,
                correct_code=f.correct_code,
                created_at=f.created_at,
                received_at=f.received_at,
                uuid=f.uuid,
            )
            for f in self._feedback.values()
            if f.detection_uuid in want
        ]
        review = []
        for v in self._verdicts:
            det = self._clips[v.clip_uuid].detection_uuid
            if det in want and v.verdict is not ReviewVerdict.SKIP:
                review.append(
                    row(det, verdict=v.verdict, species=v.species_code, reviewer=v.reviewer, seq=v.seq)
                )
        judged = judge(cloud, guide, review)
        return [judged[d.uuid][1] if d.uuid in judged else Judgement(d.uuid, d.species_code) for d in dets]

    def _judged(self) -> list[DetectionRecord]:
        """Detections with a confirmation, feedback or a (non-skip) verdict; call under the lock."""
        keys = {c.detection_uuid for c in self._confirmations.values() if c.detection_uuid}
        keys |= {f.detection_uuid for f in self._feedback.values()}
        keys |= {
            self._clips[v.clip_uuid].detection_uuid
            for v in self._verdicts
            if v.verdict is not ReviewVerdict.SKIP and self._clips[v.clip_uuid].detection_uuid
        }
        return [self._detections[k] for k in sorted(k for k in keys if k in self._detections)]

    def console_overview(self) -> ConsoleOverview:
        with self._lock:
            per_day: dict[str, int] = {}
            for t in self._tours.values():
                day = t.started_at.date().isoformat()
                per_day[day] = per_day.get(day, 0) + 1
            heard: dict[str, int] = {}
            for d in self._detections.values():
                heard[d.species_code] = heard.get(d.species_code, 0) + 1
            judged = self._judge(self._judged())
            rates: dict[str, list[int]] = {}
            for c in self._confirmations.values():
                day = self._clips[c.clip_uuid].recorded_at.date().isoformat()
                r = rates.setdefault(day, [0, 0])
                r[0] += c.agree is not None
                r[1] += c.agree is False
            pending = self._queue(QueueFilter())
        return ConsoleOverview(
            tours_per_day=dict(sorted(per_day.items())),
            species=overview_species(heard, judged),
            disagreement_per_day=[DayRate(d, a, b) for d, (a, b) in sorted(rates.items())],
            devices=self.devices(),
            review_pending=len(pending),
            counts=self.counts(),
        )

    def _queue(self, f: QueueFilter) -> list[ReviewItem]:
        """The filtered queue in order; call under the lock."""
        last: dict[str, ReviewVerdictRecord] = {v.clip_uuid: v for v in self._verdicts}
        waiting = [u for u in self._clips if u not in last or last[u].verdict is ReviewVerdict.SKIP]
        out = []
        for item in self._items(waiting):
            c = item.clip
            conf = item.confirmation
            top = conf.species[0]["code"] if conf and conf.species else None
            edge = item.detection.species_code if item.detection else None
            if f.species is not None and f.species not in (edge, top):
                continue
            if f.device is not None and item.device != f.device:
                continue
            if f.since is not None and c.recorded_at < as_utc(f.since):
                continue
            if f.until is not None and c.recorded_at >= as_utc(f.until):
                continue
            if f.reason is not None and item.reason is not f.reason:
                continue
            out.append(item)
        return sorted(out, key=lambda i: (bool(i.verdicts), i.reason.rank, i.clip.received_at, i.clip.uuid))

    def _items(self, uuids: list[str]) -> list[ReviewItem]:
        guide: dict[str, dict[str, Any]] = {}
        for fb in sorted(self._feedback.values(), key=lambda f: (f.created_at, f.received_at, f.uuid)):
            guide[fb.detection_uuid] = {"kind": fb.kind, "correct_code": fb.correct_code, "note": fb.note}
        verdicts: dict[str, list[ReviewVerdictRecord]] = {}
        for v in self._verdicts:
            verdicts.setdefault(v.clip_uuid, []).append(v)
        return review_items(
            uuids,
            self._clips,
            self._detections,
            guide,
            self._confirmations,
            verdicts,
            {d.id: d.name for d in self._devices.values()},
        )

    def review_queue(
        self, filters: QueueFilter | None = None, limit: int = 20, offset: int = 0
    ) -> ReviewPage:
        with self._lock:
            q = self._queue(filters or QueueFilter())
        return ReviewPage(q[offset : offset + limit], len(q))

    def review_item(self, clip_uuid: str) -> ReviewItem | None:
        with self._lock:
            key = norm_uuid(clip_uuid) or ""
            return self._items([key])[0] if key in self._clips else None

    def _tour_item(self, t: _Tour) -> TourListItem:
        dets = [d for d in self._detections.values() if d.tour_uuid == t.uuid]
        return TourListItem(
            uuid=t.uuid,
            guide=t.guide,
            device=self._devices[t.device_id].name,
            location=t.location,
            latitude=t.latitude,
            longitude=t.longitude,
            started_at=t.started_at,
            ended_at=t.ended_at,
            detections=len(dets),
            species=len({d.species_code for d in dets}),
        )

    def tours(self, limit: int = 50, offset: int = 0) -> list[TourListItem]:
        with self._lock:
            ordered = sorted(self._tours.values(), key=lambda t: t.uuid)
            ordered.sort(key=lambda t: t.started_at, reverse=True)
            return [self._tour_item(t) for t in ordered[offset : offset + limit]]

    def tour_timeline(self, tour_uuid: str) -> TourTimeline | None:
        with self._lock:
            t = self._tours.get(norm_uuid(tour_uuid) or "")
            if t is None:
                return None
            dets = sorted(
                (d for d in self._detections.values() if d.tour_uuid == t.uuid),
                key=lambda d: (d.start_time, d.uuid),
            )
            clips: dict[str, list[ClipRecord]] = {}
            for c in self._clips.values():
                if c.detection_uuid is not None:
                    clips.setdefault(c.detection_uuid, []).append(c)
            entries = [
                TimelineEntry(
                    d,
                    j,
                    [c.uuid for c in sorted(clips.get(d.uuid, []), key=lambda c: (c.received_at, c.uuid))],
                )
                for d, j in zip(dets, self._judge(dets))
            ]
            mine = [c for c in self._clips.values() if c.tour_uuid == t.uuid]
            verdicts: dict[str, list[ReviewVerdictRecord]] = {}
            for v in self._verdicts:
                verdicts.setdefault(v.clip_uuid, []).append(v)
            return TourTimeline(self._tour_item(t), entries, tour_clips(mine, self._confirmations, verdicts))

    def species_page(self, code: str, best: int = 12) -> SpeciesPage:
        with self._lock:
            per_day: dict[str, int] = {}
            for d in self._detections.values():
                if d.species_code == code:
                    day = d.start_time.date().isoformat()
                    per_day[day] = per_day.get(day, 0) + 1
            judged_dets = self._judged()
            judgements = self._judge(judged_dets)
            mine = [(d.start_time, j) for d, j in zip(judged_dets, judgements) if d.species_code == code]
            others = [
                j
                for j in judgements
                if j.species_code != code and code in (j.review_species, j.guide_code, j.cloud_top)
            ]
            relabelled = {v.clip_uuid for v in self._verdicts if v.species_code == code}
            candidates = []
            for c in self._clips.values():
                det = self._detections.get(c.detection_uuid or "")
                if (det is not None and det.species_code == code) or c.uuid in relabelled:
                    conf = self._confirmations.get(c.uuid)
                    candidates.append(
                        (
                            c,
                            det.species_code if det else None,
                            det.confidence if det else None,
                            conf.species if conf else None,
                        )
                    )
        return species_pages(code, per_day, mine, candidates, others, best)

    def export_detections(
        self,
        since: datetime,
        until: datetime,
        after: tuple[datetime, str] | None = None,
        limit: int = 5000,
    ) -> list[ExportRow]:
        lo, hi = as_utc(since), as_utc(until)
        with self._lock:
            dets = sorted(
                (
                    d
                    for d in self._detections.values()
                    if lo <= d.start_time < hi and (after is None or (d.start_time, d.uuid) > after)
                ),
                key=lambda d: (d.start_time, d.uuid),
            )[:limit]
            first_clip: dict[str, ClipRecord] = {}
            for c in sorted(self._clips.values(), key=lambda c: c.received_at, reverse=True):
                if c.detection_uuid is not None:
                    first_clip[c.detection_uuid] = c
            out = []
            for d, j in zip(dets, self._judge(dets)):
                t = self._tours[d.tour_uuid]
                clip = first_clip.get(d.uuid)
                out.append(
                    ExportRow(
                        detection=d,
                        judgement=j,
                        guide=t.guide,
                        device=self._devices[d.device_id].name,
                        location=t.location,
                        latitude=t.latitude,
                        longitude=t.longitude,
                        tour_started_at=t.started_at,
                        clip_path=clip.path if clip else None,
                    )
                )
            return out
