"""An in-memory implementation of :class:`edge.store.Store`: the same named operations and the same
semantics as the SQLite store (one contract suite runs against both), nothing on disk. For fast
tests, demos and tools that need a store without a file; it keeps nothing across processes.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from edge.records import (
    AudioPause,
    Clip,
    ClipReason,
    Confirmation,
    ConfirmationResult,
    Counter,
    Detection,
    DetectionStatus,
    ExportRow,
    Feedback,
    GuideVerdict,
    ModelRecord,
    NewClip,
    NewDetection,
    NewRecording,
    NewTour,
    Pending,
    Recording,
    SpeciesCount,
    SyncBatchRows,
    SyncInfo,
    SyncMarks,
    SyncState,
    Tour,
    TourSummary,
)
from edge.store import _earliest, _latest, _ts, new_uuid
from shared_features.sqlite import now

_PRIORITY = {ClipReason.FLAGGED: 0, ClipReason.UNCERTAIN: 1, ClipReason.RANDOM: 2}


class MemoryStore:
    """In-memory :class:`edge.store.Store` (thread-safe: one lock around every operation)."""

    def __init__(self) -> None:
        self.notice: str | None = None
        self._lock = threading.RLock()
        self._tours: dict[str, Tour] = {}
        self._recordings: dict[str, Recording] = {}
        self._detections: dict[str, Detection] = {}
        self._clips: dict[str, Clip] = {}
        self._feedback: dict[str, Feedback] = {}
        self._models: dict[str, ModelRecord] = {}
        self._counters: dict[Counter, int] = {c: 0 for c in Counter}
        self._pause: AudioPause | None = None
        self._last_sync: str | None = None
        self._last_error: str | None = None
        self._cursor = 0

    # ------------------------------------------------------------------ tours and recordings
    def start_tour(self, tour: NewTour) -> str:
        u = new_uuid()
        with self._lock:
            self._tours[u] = Tour(
                u,
                tour.guide,
                tour.location,
                tour.latitude,
                tour.longitude,
                tour.started_at or now(),
                None,
                None,
            )
        return u

    def end_tour(self, tour_uuid: str, at: str | None = None) -> None:
        with self._lock:
            t = self._tours.get(tour_uuid)
            if t is None or t.ended_at is not None:
                return
            dets = [d for d in self._detections.values() if d.tour_uuid == tour_uuid]
            recs = [r.started_at for r in self._recordings.values() if r.tour_uuid == tour_uuid]
            first = min([d.start_time for d in dets] + recs, key=_ts, default=None)
            last = max((d.end_time for d in dets), key=_ts, default=None)
            start = _earliest(t.started_at, first)
            end = _latest(_latest(at or now(), last), start)
            self._tours[tour_uuid] = replace(t, started_at=start, ended_at=end, synced_at=None)

    def tour(self, tour_uuid: str) -> Tour | None:
        with self._lock:
            return self._tours.get(tour_uuid)

    def tours(self) -> list[TourSummary]:
        with self._lock:
            out = []
            for t in sorted(self._tours.values(), key=lambda t: t.started_at):
                dets = [d for d in self._detections.values() if d.tour_uuid == t.uuid]
                out.append(TourSummary(t, len(dets), len({d.species_code for d in dets})))
            return out

    def add_recording(self, rec: NewRecording) -> str:
        u = new_uuid()
        with self._lock:
            self._need(self._tours, rec.tour_uuid, "tour")
            self._recordings[u] = Recording(
                u, rec.tour_uuid, rec.source, rec.path, rec.started_at, rec.start_basis, None, None
            )
        return u

    def finish_recording(self, recording_uuid: str, duration_s: float, warning: str | None) -> None:
        with self._lock:
            r = self._recordings.get(recording_uuid)
            if r is not None:
                self._recordings[recording_uuid] = replace(r, duration_s=duration_s, warning=warning)

    def recording(self, recording_uuid: str) -> Recording | None:
        with self._lock:
            return self._recordings.get(recording_uuid)

    def recordings(self, tour_uuid: str) -> list[Recording]:
        with self._lock:
            recs = [r for r in self._recordings.values() if r.tour_uuid == tour_uuid]
        return sorted(recs, key=lambda r: r.started_at)

    # ------------------------------------------------------------------ detections
    def add_detection(self, d: NewDetection) -> str:
        u = d.uuid or new_uuid()
        with self._lock:
            self._need(self._tours, d.tour_uuid, "tour")
            if d.recording_uuid is not None:
                self._need(self._recordings, d.recording_uuid, "recording")
            if u in self._detections:
                raise ValueError(f"detection {u} exists")
            self._detections[u] = Detection(
                uuid=u,
                tour_uuid=d.tour_uuid,
                recording_uuid=d.recording_uuid,
                species_code=d.species_code,
                scientific_name=d.scientific_name,
                common_name=d.common_name,
                taxon_class=d.taxon_class,
                start_time=d.start_time,
                end_time=d.end_time,
                offset_start=float(d.offset_start),
                offset_end=float(d.offset_end),
                confidence=float(d.confidence),
                band=d.band,
                model_version=d.model_version,
                status=DetectionStatus.PENDING,
                guide_verdict=None,
                closed=False,
                cloud_species=(),
                synced_at=None,
                sync_error=None,
                created_at=now(),
            )
        return u

    def extend_detection(
        self, detection_uuid: str, end_time: str, offset_end: float, confidence: float, band: str
    ) -> None:
        with self._lock:
            d = self._detections.get(detection_uuid)
            if d is not None and not d.closed:
                self._detections[detection_uuid] = replace(
                    d,
                    end_time=end_time,
                    offset_end=float(offset_end),
                    confidence=max(d.confidence, float(confidence)),
                    band=band,
                )

    def close_detection(self, detection_uuid: str) -> None:
        with self._lock:
            d = self._detections.get(detection_uuid)
            if d is not None:
                self._detections[detection_uuid] = replace(d, closed=True)

    def close_open_detections(self) -> int:
        with self._lock:
            open_ = [u for u, d in self._detections.items() if not d.closed]
            for u in open_:
                self._detections[u] = replace(self._detections[u], closed=True)
            return len(open_)

    def detection(self, detection_uuid: str) -> Detection | None:
        with self._lock:
            return self._detections.get(detection_uuid)

    def detections(self, tour_uuid: str | None = None) -> list[Detection]:
        with self._lock:
            dets = [d for d in self._detections.values() if tour_uuid is None or d.tour_uuid == tour_uuid]
        return sorted(dets, key=lambda d: (d.start_time, d.offset_start))

    def species_counts(self, tour_uuid: str | None = None) -> list[SpeciesCount]:
        by: dict[str, list[Detection]] = {}
        for d in self.detections(tour_uuid):
            by.setdefault(d.species_code, []).append(d)
        out = [
            SpeciesCount(
                code,
                len(ds),
                min(d.start_time for d in ds),
                max(d.start_time for d in ds),
                sum(d.status is DetectionStatus.CONFIRMED for d in ds),
                sum(d.status is DetectionStatus.DISPUTED for d in ds),
            )
            for code, ds in by.items()
        ]
        return sorted(out, key=lambda s: s.first)

    # ------------------------------------------------------------------ clips
    def add_clip(self, c: NewClip) -> str:
        u = c.uuid or new_uuid()
        with self._lock:
            if c.tour_uuid is not None:
                self._need(self._tours, c.tour_uuid, "tour")
            if c.detection_uuid is not None:
                self._need(self._detections, c.detection_uuid, "detection")
            self._clips[u] = Clip(
                uuid=u,
                tour_uuid=c.tour_uuid,
                detection_uuid=c.detection_uuid,
                recording_uuid=c.recording_uuid,
                path=c.path,
                sha256=c.sha256,
                bytes=int(c.bytes),
                reason=ClipReason(c.reason),
                start_offset=float(c.start_offset),
                source=c.source,
                source_offset=c.source_offset,
                duration_s=c.duration_s,
                edge_top=tuple(c.edge_top),
                recorded_at=c.recorded_at or now(),
                synced_at=None,
                evicted_at=None,
                sync_error=None,
            )
        return u

    def clips(self, include_evicted: bool = False) -> list[Clip]:
        with self._lock:
            return [c for c in self._clips.values() if include_evicted or c.evicted_at is None]

    def clip_bytes(self, tour_uuid: str | None = None) -> int:
        return sum(c.bytes for c in self.clips() if tour_uuid is None or c.tour_uuid == tour_uuid)

    def evictable_clips(self) -> list[Clip]:
        return sorted((c for c in self.clips() if c.synced_at is not None), key=lambda c: c.recorded_at)

    def mark_evicted(self, clip_uuid: str) -> None:
        self._update_clip(clip_uuid, evicted_at=now())

    def flag_clips_of(self, detection_uuid: str) -> int:
        with self._lock:
            mine = [c for c in self.clips() if c.detection_uuid == detection_uuid]
            for c in mine:
                self._clips[c.uuid] = replace(c, reason=ClipReason.FLAGGED, synced_at=None)
            return len(mine)

    def recent_clip_paths(self, limit: int) -> list[str]:
        return [c.path for c in reversed(self.clips())][:limit]

    # ------------------------------------------------------------------ feedback
    def add_feedback(
        self,
        detection_uuid: str,
        kind: GuideVerdict,
        correct_code: str | None = None,
        note: str | None = None,
    ) -> str:
        u = new_uuid()
        kind = GuideVerdict(kind)
        with self._lock:
            d = self._need(self._detections, detection_uuid, "detection")
            self._feedback[u] = Feedback(u, detection_uuid, kind, correct_code, note, now(), None)
            self._detections[detection_uuid] = replace(d, guide_verdict=kind)
        return u

    # ------------------------------------------------------------------ sync
    def _blocked(self, c: Clip) -> bool:
        d = self._detections.get(c.detection_uuid) if c.detection_uuid else None
        return c.sync_error is not None or (d is not None and d.sync_state is SyncState.REJECTED)

    def pending(self) -> Pending:
        with self._lock:
            states = [d.sync_state for d in self._detections.values()]
            live = [c for c in self._clips.values() if c.synced_at is None and c.evicted_at is None]
            feedback = [
                f
                for f in self._feedback.values()
                if f.synced_at is None
                and self._detections[f.detection_uuid].sync_state is not SyncState.REJECTED
            ]
            return Pending(
                detections=states.count(SyncState.PENDING),
                clips=sum(not self._blocked(c) for c in live),
                feedback=len(feedback),
                tours=sum(t.synced_at is None for t in self._tours.values()),
                open_detections=sum(not d.closed for d in self._detections.values()),
                rejected_detections=states.count(SyncState.REJECTED),
                rejected_clips=sum(self._blocked(c) for c in live),
            )

    def unsynced_batch(self, limit: int) -> SyncBatchRows:
        with self._lock:
            tours = sorted(
                (t for t in self._tours.values() if t.synced_at is None), key=lambda t: t.started_at
            )
            dets = [d for d in self.detections() if d.sync_state is SyncState.PENDING][:limit]
            return SyncBatchRows(tours, dets)

    def mark_synced(self, marks: SyncMarks) -> None:
        stamp = now()
        with self._lock:
            for u in marks.tours:
                if u in self._tours:
                    self._tours[u] = replace(self._tours[u], synced_at=stamp)
            for u in marks.detections:
                if u in self._detections:
                    self._detections[u] = replace(self._detections[u], synced_at=stamp, sync_error=None)
            for u, error in marks.rejected.items():
                d = self._detections.get(u)
                if d is not None and d.synced_at is None:
                    self._detections[u] = replace(d, sync_error=error)

    def feedback_to_send(self) -> list[Feedback]:
        with self._lock:
            return sorted(
                (
                    f
                    for f in self._feedback.values()
                    if f.synced_at is None and self._detections[f.detection_uuid].synced_at is not None
                ),
                key=lambda f: f.created_at,
            )

    def mark_feedback_synced(self, feedback_uuid: str) -> None:
        with self._lock:
            f = self._feedback.get(feedback_uuid)
            if f is not None:
                self._feedback[feedback_uuid] = replace(f, synced_at=now())

    def clips_to_send(self, limit: int | None = None) -> list[Clip]:
        with self._lock:
            out = [
                c
                for c in self.clips()
                if c.synced_at is None
                and c.sync_error is None
                and (c.detection_uuid is None or self._detections[c.detection_uuid].synced_at is not None)
            ]
        out.sort(key=lambda c: (_PRIORITY[c.reason], c.recorded_at))
        return out if limit is None else out[:limit]

    def mark_clip_synced(self, clip_uuid: str) -> None:
        self._update_clip(clip_uuid, synced_at=now(), sync_error=None)

    def mark_clip_failed(self, clip_uuid: str, error: str) -> None:
        self._update_clip(clip_uuid, sync_error=error[:500])

    def apply_confirmation(self, conf: Confirmation) -> ConfirmationResult:
        if conf.detection_uuid is None:
            return ConfirmationResult.NO_DETECTION
        if conf.agree is None:
            return ConfirmationResult.NO_VERDICT
        with self._lock:
            d = self._detections.get(conf.detection_uuid)
            if d is None:
                return ConfirmationResult.UNKNOWN_DETECTION
            status = DetectionStatus.CONFIRMED if conf.agree else DetectionStatus.DISPUTED
            self._detections[d.uuid] = replace(d, status=status, cloud_species=tuple(conf.species))
        return ConfirmationResult.APPLIED

    def sync_info(self) -> SyncInfo:
        with self._lock:
            return SyncInfo(self._last_sync, self._last_error, self._cursor)

    def set_confirmations_cursor(self, seq: int) -> None:
        with self._lock:
            self._cursor = int(seq)

    def record_sync(self, ok: bool, at: str | None = None) -> None:
        with self._lock:
            if ok:
                self._last_sync = at or now()
            else:
                self._last_error = at or now()

    # ------------------------------------------------------------------ counters, audio state
    def add_to_counter(self, counter: Counter, n: int = 1) -> None:
        with self._lock:
            self._counters[Counter(counter)] += int(n)

    def counters(self) -> dict[Counter, int]:
        with self._lock:
            return dict(self._counters)

    def set_audio_pause(self, pause: AudioPause | None) -> None:
        with self._lock:
            self._pause = pause

    def audio_pause(self) -> AudioPause | None:
        with self._lock:
            return self._pause

    # ------------------------------------------------------------------ exports
    def export_rows(self, tour_uuid: str | None = None) -> list[ExportRow]:
        with self._lock:
            rows = []
            for d in self.detections(tour_uuid):
                clip = next(
                    (c.path for c in self.clips() if c.detection_uuid == d.uuid),
                    None,
                )
                rec = self._recordings.get(d.recording_uuid) if d.recording_uuid else None
                rows.append(ExportRow(d, self._tours[d.tour_uuid], rec, clip))
            return rows

    # ------------------------------------------------------------------ models
    def install_model(
        self, version: str, path: str, sha256: str, fingerprint: str, shadow: dict[str, Any] | None
    ) -> None:
        with self._lock:
            self._models[version] = ModelRecord(
                version, path, sha256, fingerprint, now(), shadow, False, False
            )

    def activate_model(self, version: str) -> None:
        with self._lock:
            for v, m in list(self._models.items()):
                self._models[v] = replace(m, previous=m.active and v != version, active=v == version)

    def active_model(self) -> ModelRecord | None:
        with self._lock:
            return next((m for m in self._models.values() if m.active), None)

    def previous_model(self) -> ModelRecord | None:
        with self._lock:
            return next((m for m in self._models.values() if m.previous), None)

    # ------------------------------------------------------------------ health
    def check(self) -> str:
        return "ok"

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ helpers
    def _update_clip(self, clip_uuid: str, **changes: Any) -> None:
        with self._lock:
            c = self._clips.get(clip_uuid)
            if c is not None:
                self._clips[clip_uuid] = replace(c, **changes)

    @staticmethod
    def _need(table: dict[str, Any], key: str, what: str) -> Any:
        """Foreign keys, as SQLite enforces them."""
        if key not in table:
            raise ValueError(f"no {what} {key}")
        return table[key]
