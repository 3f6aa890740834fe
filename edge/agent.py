"""The agent: source → detector → store → sampler, with callbacks for whoever displays it.

A detection event is written to the store (committed) *before* ``on_detection`` is called, so a
guide never sees something the device could lose. Opening an agent closes the events a crash left
open. The CLI, the TUI's workers and the demo all drive this one class.

Times: every recording has a start (the device clock for live audio; for a file its name, a
``--start`` flag or its modification time — :mod:`edge.recording`), stored with the recording
together with where it came from. A detection's time is its recording's start plus its offset, in
UTC. An event never ends after its recording's last sample, and a tour is ended no earlier than its
last detection: events never outlive their tour.

A full disk never stops detection: clips pause first (:class:`edge.sampler.Sampler`); a detection
whose commit fails is held in memory, retried on every window and shown once it is committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from edge.capture import AudioSource, Segment
from edge.detector import Detector, Event, PackageScorer, Scorer, WindowResult, load_scorer
from edge.errors import StorageFullError
from edge.records import (
    ClipReason,
    Detection,
    DetectionExtension,
    EdgeScore,
    GuideVerdict,
    NewDetection,
    NewRecording,
    NewTour,
    SpeciesCount,
    WindowEvents,
)
from edge.sampler import ClipSource, Sampler
from edge.settings import EdgeSettings
from edge.speech import SileroSpeechGate, SpeechGate
from edge.status import DeviceReport, device_report
from edge.store import Store, new_uuid, open_store
from edge.thresholds import settings_thresholds

log = logging.getLogger(__name__)
EDGE_TOP_K = 3


def blas_threads(n: int) -> Any:
    """Hold numpy's BLAS (the log-mel's filterbank product) to ``n`` threads while the agent runs:
    its default, one thread per core, spins against the model's own threads and, on a busy 2-core
    machine, made the streaming features ~10x slower (benchmarks/edge_pipeline.py)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=max(1, n), user_api="blas")


def iso(t: datetime) -> str:
    """UTC, ISO 8601 with milliseconds: the store's one time format (sorts as text)."""
    return t.astimezone(UTC).isoformat(timespec="milliseconds")


@dataclass
class RunSummary:
    segments: int = 0
    seconds: float = 0.0
    windows: int = 0
    detections: int = 0
    species: set[str] = field(default_factory=set)
    #: per recording: (source, warning) for those that decoded with a problem (e.g. truncated)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    #: detections not committed yet because the storage is full (held, retried)
    held: int = 0


@dataclass
class _Held:
    """A detection the store could not take yet (disk full): retried on every window."""

    event: Event
    new: NewDetection
    closed: bool = False


class Agent:
    def __init__(
        self,
        settings: EdgeSettings | None = None,
        *,
        scorer: Scorer | None = None,
        store: Store | None = None,
        speech_gate: SpeechGate | None = None,
        on_detection: Callable[[Event, dict[str, Any]], None] | None = None,
        on_window: Callable[[WindowResult, list[Event]], None] | None = None,
        seed: int | None = None,
    ) -> None:
        self.settings = s = settings or EdgeSettings()
        self.store: Store = store if store is not None else open_store(s.db_path)
        recovered = self.store.close_open_detections()
        if recovered:
            log.warning("closed %d detection events left open by an interrupted run", recovered)
        if scorer is None:
            active = self.store.active_model()
            scorer = load_scorer(None if active is None else Path(active.path), s.taxonomy_path, s.threads)
        self.scorer = scorer
        #: the thresholds in use: the installed release's unless the settings override them
        #: (:mod:`edge.thresholds`); a scorer given by the caller carries none of its own
        model_path = scorer.path if isinstance(scorer, PackageScorer) else None
        self.thresholds = settings_thresholds(s, model_path, scorer.labels)
        self.detector = Detector(
            scorer, self.thresholds.default, dict(self.thresholds.species), s.stride_seconds
        )
        self.sampler = Sampler(
            self.store,
            s.clip_dir,
            speech_gate or SileroSpeechGate(s.speech_threshold, s.speech_min_seconds),
            s.random_clip_rate,
            s.uncertain_margin,
            int(s.tour_clip_budget_mb * 1e6),
            int(s.total_clip_budget_mb * 1e6),
            s.clip_format,
            seed,
            int(s.min_free_mb * 1e6),
            s.detection_clip_rate,
            uncertain_gap_s=s.uncertain_clip_gap_s,
            uncertain_max_gap_s=s.uncertain_clip_max_gap_s,
            uncertain=s.uncertain_clips,
        )
        self.on_detection = on_detection
        self.on_window = on_window
        self.tour_uuid: str | None = None
        self._t0 = datetime.now(UTC)
        self._recording: str | None = None
        self._source_name = ""
        self._seen_s = 0.0
        self._tour_end: datetime | None = None  # end of the tour's recorded audio (files only)
        self._tour_live = False  # the tour has live audio: it ends on the device clock
        self._held: list[_Held] = []
        self._stop = False
        self.source: AudioSource | None = None

    # ------------------------------------------------------------------ tours
    def start_tour(
        self, guide: str | None = None, location: str | None = None, started_at: datetime | None = None
    ) -> str:
        if self.tour_uuid is not None:
            self.end_tour()
        s = self.settings
        self.tour_uuid = self.store.start_tour(
            NewTour(
                guide or s.guide,
                location or s.location,
                s.latitude,
                s.longitude,
                iso(started_at) if started_at is not None else None,
            )
        )
        self._tour_end, self._tour_live = None, False
        return self.tour_uuid

    def end_tour(self) -> None:
        self.sampler.drain()
        for ev in self.detector.close_all():
            self._close(ev)
        self._retry_held()
        if self.tour_uuid is not None:
            at = None if self._tour_live or self._tour_end is None else iso(self._tour_end)
            try:
                self.store.end_tour(self.tour_uuid, at)
            except StorageFullError as exc:
                log.error("tour %s could not be ended: %s", self.tour_uuid, exc)
            self.tour_uuid = None

    # ------------------------------------------------------------------ running
    def stop(self) -> None:
        self._stop = True
        if self.source is not None:
            self.source.stop()

    def run(
        self, source: AudioSource, max_seconds: float | None = None, *, location: str | None = None
    ) -> RunSummary:
        """Process ``source`` until it ends, :meth:`stop` is called, or ``max_seconds`` of audio. If
        no tour is open when the first audio arrives, one is started (``location`` for it): a
        source that yields no audio leaves no tour behind."""
        self.source = source
        out = RunSummary()
        with blas_threads(self.settings.threads):
            try:
                for seg in source.segments():
                    self._run_segment(seg, out, max_seconds, location)
                    if self._stop or (max_seconds is not None and out.seconds >= max_seconds):
                        break
            except BaseException:
                self.sampler.drain(raise_errors=False)
                raise
        self.sampler.drain()  # the clips of the last windows are written when run() returns
        out.held = len(self._held)
        return out

    def _run_segment(
        self, seg: Segment, out: RunSummary, max_seconds: float | None, location: str | None
    ) -> None:
        sr = self.detector.cfg.sample_rate
        self.detector.reset()
        self._recording = None
        seen = 0
        for chunk in seg.chunks:
            if self._recording is None:
                self._begin_recording(seg, location)
            seen += chunk.size
            self._seen_s = seen / sr
            for r in self.detector.push(chunk):
                self._handle(r, out)
            if self._stop or (max_seconds is not None and out.seconds + seen / sr >= max_seconds):
                break
        if self._recording is None:
            return  # no audio: no tour, no recording
        recording = self._recording or None
        for r in self.detector.flush():
            self._handle(r, out)
        for ev in self.detector.close_all():
            self._close(ev)
        out.segments += 1
        out.seconds += seen / sr
        if seg.warning:
            out.warnings.append((self._source_name, seg.warning))
        if seg.started_at is not None:
            end = self._t0 + timedelta(seconds=seen / sr)
            self._tour_end = end if self._tour_end is None else max(self._tour_end, end)
        try:
            if recording is not None:
                self.store.finish_recording(recording, round(seen / sr, 3), seg.warning)
        except StorageFullError as exc:
            log.error("recording %s not finished in the store: %s", self._source_name, exc)

    def _begin_recording(self, seg: Segment, location: str | None) -> None:
        live = seg.started_at is None
        self._t0 = datetime.now(UTC) if seg.started_at is None else seg.started_at
        if self.tour_uuid is None:
            self.start_tour(location=location, started_at=None if live else self._t0)
        assert self.tour_uuid is not None
        self._tour_live = self._tour_live or live
        self._source_name = seg.path.name if seg.path is not None else "microphone"
        try:
            self._recording = self.store.add_recording(
                NewRecording(
                    self.tour_uuid,
                    self._source_name,
                    iso(self._t0),
                    seg.start_basis,
                    str(seg.path) if seg.path is not None else None,
                )
            )
        except StorageFullError as exc:  # detections still get their times (from the start, in memory)
            self.sampler.pause("the database is full")
            log.error("recording %s not stored: %s", self._source_name, exc)
            self._recording = ""

    def _time(self, offset: float) -> str:
        return iso(self._t0 + timedelta(seconds=offset))

    def _new_detection(self, ev: Event) -> NewDetection:
        sp = ev.species
        end = min(ev.end, self._seen_s)  # the zero-padded last window ends after the audio does
        assert self.tour_uuid is not None
        return NewDetection(
            tour_uuid=self.tour_uuid,
            recording_uuid=self._recording or None,
            species_code=sp.code,
            scientific_name=sp.scientific_name,
            common_name=sp.common_name,
            taxon_class=sp.taxon_class,
            start_time=self._time(ev.start),
            end_time=self._time(end),
            offset_start=ev.start,
            offset_end=end,
            confidence=ev.confidence,
            band=ev.band,
            model_version=self.scorer.version,
        )

    def _commit(self, ev: Event, new: NewDetection, out: RunSummary | None) -> bool:
        """Commit, then tell the display; on a full store hold it (and pause audio)."""
        try:
            ev.uuid = self.store.add_detection(new)
        except StorageFullError as exc:
            self.sampler.pause("the database is full")
            log.error("detection of %s held in memory, not stored yet: %s", new.species_code, exc)
            return False
        self._shown(ev, new, out)
        return True

    def _shown(self, ev: Event, new: NewDetection, out: RunSummary | None) -> None:
        """A committed detection: count it and tell the display."""
        if out is not None:
            out.detections += 1
            out.species.add(new.species_code)
        if self.on_detection is not None:
            self.on_detection(ev, {"tour": new.tour_uuid, "start_time": new.start_time})

    def _retry_held(self, out: RunSummary | None = None) -> None:
        while self._held:
            h = self._held[0]
            if not self._commit(h.event, h.new, out):
                return  # still full: keep the order, try again on the next window
            self._held.pop(0)
            if h.closed:
                self._close(h.event)

    def _close(self, ev: Event) -> None:
        held = next((h for h in self._held if h.event is ev), None)
        if held is not None:
            held.closed = True
            return
        if ev.uuid:
            try:
                self.store.close_detection(ev.uuid)
            except StorageFullError as exc:  # closed at the next start (close_open_detections)
                log.error("detection %s stays open for now: %s", ev.uuid, exc)

    def _apply_window(self, active: list[Event], closed: list[Event], out: RunSummary) -> None:
        """The window's new, extended and closed events in one transaction (none when nothing
        changed); the new ones are shown only once it is committed."""
        starting: list[tuple[Event, NewDetection]] = []
        extended: list[DetectionExtension] = []
        for ev in active:
            if ev.uuid is None:
                starting.append((ev, replace(self._new_detection(ev), uuid=new_uuid())))
            else:
                end = min(ev.end, self._seen_s)
                extended.append(DetectionExtension(ev.uuid, self._time(end), end, ev.confidence, ev.band))
        changes = WindowEvents(
            tuple(d for _, d in starting), tuple(extended), tuple(ev.uuid for ev in closed if ev.uuid)
        )
        if not changes:
            return
        try:
            self.store.commit_window(changes)
        except StorageFullError as exc:
            log.error("the store refused a window's changes (%s): holding what it cannot take", exc)
            self._apply_one_by_one(active, closed, out)
            return
        for ev, new in starting:
            ev.uuid = new.uuid
            self._shown(ev, new, out)

    def _apply_one_by_one(self, active: list[Event], closed: list[Event], out: RunSummary) -> None:
        """While the store is full: each change on its own, new detections held until it takes them."""
        for ev in closed:
            self._close(ev)
        for ev in active:
            held = next((h for h in self._held if h.event is ev), None)
            if held is not None:
                held.new = self._new_detection(ev)  # keeps growing while it waits
            elif ev.uuid is None:
                new = self._new_detection(ev)
                if not self._commit(ev, new, out):
                    self._held.append(_Held(ev, new))
            else:
                end = min(ev.end, self._seen_s)
                try:
                    self.store.extend_detection(ev.uuid, self._time(end), end, ev.confidence, ev.band)
                except StorageFullError as exc:
                    log.error("detection %s not extended: %s", ev.uuid, exc)

    def _handle(self, r: WindowResult, out: RunSummary) -> None:
        out.windows += 1
        if self._held:
            self._retry_held(out)
        active, closed = self.detector.events(r)
        if self._held:  # the store is full: one operation at a time, holding what it refuses
            self._apply_one_by_one(active, closed, out)
        else:
            self._apply_window(active, closed, out)
        started = [e for e in active if e.new and e.uuid]
        reason = self.sampler.reason(r.probs, self.detector.thr, new_event=bool(started), at=r.window.start)
        if reason is not None:  # the clip goes with the event that starts here, else the strongest one
            top = max(started or [e for e in active if e.uuid], key=lambda e: e.confidence, default=None)
            order = np.argsort(-r.probs)[:EDGE_TOP_K]
            labels = self.scorer.labels
            self.sampler.submit(  # gated, encoded and written by the sampler's worker
                r.samples,
                self.detector.cfg.sample_rate,
                reason,
                ClipSource(
                    tour_uuid=self.tour_uuid,
                    detection_uuid=top.uuid if top else None,
                    recording_uuid=self._recording or None,
                    source=self._source_name,
                    source_offset=r.window.start,
                    start_offset=max(0.0, top.start - r.window.start) if top else 0.0,
                    edge_top=tuple(
                        EdgeScore(labels[int(j)].code, round(float(r.probs[j]), 4)) for j in order
                    ),
                    recorded_at=self._time(r.window.start),
                ),
            )
        if self.on_window is not None:
            self.on_window(r, active)

    # ------------------------------------------------------------------ the guide's feedback
    def feedback(
        self, detection_uuid: str, kind: GuideVerdict | str, correct_code: str | None = None
    ) -> dict[str, Any]:
        """Record a guide's verdict; a wrong or doubtful detection's audio is kept as a flagged clip
        (from its stored clip, or from the recent audio still in memory — speech-gated like any)."""
        try:
            kind = GuideVerdict(kind)
        except ValueError:
            raise ValueError(f"unknown feedback kind {kind!r}") from None
        if correct_code is not None and correct_code not in self.scorer.labels:
            raise ValueError(f"unknown species code {correct_code!r}")
        det = self.store.detection(detection_uuid)
        if det is None:
            raise ValueError(f"no detection {detection_uuid}")
        rec = self.store.recording(det.recording_uuid) if det.recording_uuid else None
        fid = self.store.add_feedback(detection_uuid, kind, correct_code)
        clip = None
        if kind is not GuideVerdict.CONFIRMED:
            if self.store.flag_clips_of(detection_uuid) == 0:
                same = det.recording_uuid is not None and det.recording_uuid == self._recording
                audio = self.detector.audio(det.offset_start, det.offset_end) if same else None
                if audio is not None and audio.size:
                    clip = self.sampler.save(
                        audio,
                        self.detector.cfg.sample_rate,
                        ClipReason.FLAGGED,
                        ClipSource(
                            tour_uuid=det.tour_uuid,
                            detection_uuid=detection_uuid,
                            recording_uuid=det.recording_uuid,
                            source=rec.source if rec is not None else None,
                            source_offset=det.offset_start,
                            recorded_at=det.start_time,  # the detection's own time
                        ),
                    )
            else:
                clip = "existing"
        return {"feedback": fid, "clip": clip}

    def level(self) -> float:
        src = self.source
        return float(getattr(getattr(src, "stats", None), "level_dbfs", -120.0))

    def report(self) -> DeviceReport:
        """The device's status now (for the TUI's workers, ``edge status`` and sync)."""
        return device_report(self.store, self.settings.clip_dir, self.scorer.version)

    def tour_view(self) -> TourView:
        """The open tour's species so far, and how many per taxon class."""
        species = self.store.species_counts(self.tour_uuid) if self.tour_uuid else []
        by_class: dict[str, int] = {}
        for sc in species:
            cls = self.scorer.labels[sc.code].taxon_class if sc.code in self.scorer.labels else "?"
            by_class[cls] = by_class.get(cls, 0) + 1
        return TourView(self.tour_uuid, species, by_class)

    def detections_now(self, uuids: list[str]) -> list[Detection]:
        """The current state of these detections (the cloud's verdict, the guide's, sync)."""
        return [d for d in (self.store.detection(u) for u in uuids) if d is not None]


@dataclass(frozen=True)
class TourView:
    tour_uuid: str | None
    species: list[SpeciesCount]
    by_class: dict[str, int]


def top_species(r: WindowResult, labels: Any, k: int = 5) -> list[tuple[Any, float]]:
    order = np.argsort(-r.probs)[:k]
    return [(labels[int(j)], float(r.probs[j])) for j in order]
