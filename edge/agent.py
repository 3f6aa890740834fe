"""The agent: source → detector → store → sampler, with callbacks for whoever displays it.

A detection event is written to the store (committed) *before* ``on_detection`` is called, so a
guide never sees something the device could lose. Opening an agent closes the events a crash left
open. The CLI, the TUI's workers and the demo all drive this one class.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from edge.capture import AudioSource
from edge.detector import Detector, Event, Scorer, WindowResult, load_scorer, load_thresholds
from edge.sampler import Sampler
from edge.settings import EdgeSettings
from edge.store import EdgeStore

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    segments: int = 0
    seconds: float = 0.0
    windows: int = 0
    detections: int = 0
    species: set[str] = field(default_factory=set)


class Agent:
    def __init__(
        self,
        settings: EdgeSettings | None = None,
        *,
        scorer: Scorer | None = None,
        store: EdgeStore | None = None,
        on_detection: Callable[[Event, dict[str, Any]], None] | None = None,
        on_window: Callable[[WindowResult, list[Event]], None] | None = None,
        seed: int | None = None,
    ) -> None:
        self.settings = s = settings or EdgeSettings()
        self.store = store or EdgeStore(s.db_path)
        recovered = self.store.close_open_detections()
        if recovered:
            log.warning("closed %d detection events left open by an interrupted run", recovered)
        if scorer is None:
            active = self.store.active_model()
            scorer = load_scorer(None if active is None else Path(active["path"]), s.taxonomy_path, s.threads)
        self.scorer = scorer
        self.detector = Detector(
            scorer, s.threshold, load_thresholds(s.thresholds_file, scorer.labels), s.stride_seconds
        )
        self.sampler = Sampler(
            self.store,
            s.clip_dir,
            s.random_clip_rate,
            s.uncertain_margin,
            int(s.tour_clip_budget_mb * 1e6),
            int(s.total_clip_budget_mb * 1e6),
            s.clip_format,
            seed,
        )
        self.on_detection = on_detection
        self.on_window = on_window
        self.tour_uuid: str | None = None
        self._t0 = datetime.now(UTC)
        self._stop = False
        self.source: AudioSource | None = None

    # ------------------------------------------------------------------ tours
    def start_tour(self, guide: str | None = None, location: str | None = None) -> str:
        if self.tour_uuid is not None:
            self.end_tour()
        s = self.settings
        self.tour_uuid = self.store.start_tour(
            guide or s.guide, location or s.location, s.latitude, s.longitude
        )
        return self.tour_uuid

    def end_tour(self) -> None:
        for ev in self.detector.close_all():
            if ev.uuid:
                self.store.close_detection(ev.uuid)
        if self.tour_uuid is not None:
            self.store.end_tour(self.tour_uuid)
            self.tour_uuid = None

    # ------------------------------------------------------------------ running
    def stop(self) -> None:
        self._stop = True
        if self.source is not None:
            self.source.stop()

    def run(self, source: AudioSource, max_seconds: float | None = None) -> RunSummary:
        """Process ``source`` until it ends, :meth:`stop` is called, or ``max_seconds`` of audio."""
        if self.tour_uuid is None:
            self.start_tour()
        self.source = source
        out = RunSummary()
        sr = self.detector.cfg.sample_rate
        for _name, chunks in source.segments():
            out.segments += 1
            self.detector.reset()
            self._t0 = datetime.now(UTC)
            seen = 0
            for chunk in chunks:
                seen += chunk.size
                for r in self.detector.push(chunk):
                    self._handle(r, out)
                if self._stop or (max_seconds is not None and out.seconds + seen / sr >= max_seconds):
                    break
            for r in self.detector.flush():
                self._handle(r, out)
            for ev in self.detector.close_all():
                if ev.uuid:
                    self.store.close_detection(ev.uuid)
            out.seconds += seen / sr
            if self._stop or (max_seconds is not None and out.seconds >= max_seconds):
                break
        return out

    def _time(self, offset: float) -> str:
        return (self._t0 + timedelta(seconds=offset)).isoformat(timespec="milliseconds")

    def _handle(self, r: WindowResult, out: RunSummary) -> None:
        out.windows += 1
        active, closed = self.detector.events(r)
        for ev in closed:
            if ev.uuid:
                self.store.close_detection(ev.uuid)
        for ev in active:
            if ev.uuid is None:
                ev.uuid = self.store.add_detection(
                    {
                        "tour_uuid": self.tour_uuid,
                        "species_code": ev.species.code,
                        "start_time": self._time(ev.start),
                        "end_time": self._time(ev.end),
                        "offset_start": ev.start,
                        "offset_end": ev.end,
                        "confidence": ev.confidence,
                        "band": ev.band,
                        "model_version": self.scorer.version,
                    }
                )  # committed before anyone is told
                out.detections += 1
                out.species.add(ev.species.code)
                if self.on_detection is not None:
                    self.on_detection(ev, {"tour": self.tour_uuid, "start_time": self._time(ev.start)})
            else:
                self.store.extend_detection(ev.uuid, self._time(ev.end), ev.end, ev.confidence, ev.band)
        reason = self.sampler.reason(r.probs, self.detector.thr)
        if reason is not None:
            top = max(active, key=lambda e: e.confidence, default=None)
            self.sampler.save(
                r.samples,
                self.detector.cfg.sample_rate,
                reason,
                tour_uuid=self.tour_uuid,
                detection_uuid=top.uuid if top else None,
                start_offset=0.0,
            )
        if self.on_window is not None:
            self.on_window(r, active)

    # ------------------------------------------------------------------ the guide's feedback
    def feedback(self, detection_uuid: str, kind: str, correct_code: str | None = None) -> dict[str, Any]:
        """Record a guide's flag; a wrong or doubtful detection's audio is kept as a flagged clip
        (from its stored clip, or from the recent audio still in memory)."""
        if kind not in ("confirmed", "wrong_species", "not_an_animal"):
            raise ValueError(f"unknown feedback kind {kind!r}")
        if correct_code is not None and correct_code not in self.scorer.labels:
            raise ValueError(f"unknown species code {correct_code!r}")
        det = self.store.detection(detection_uuid)
        if det is None:
            raise ValueError(f"no detection {detection_uuid}")
        fid = self.store.add_feedback(detection_uuid, kind, correct_code)
        clip = None
        if kind != "confirmed":
            if self.store.flag_clip_of(detection_uuid) == 0:
                audio = self.detector.audio(det["offset_start"], det["offset_end"])
                if audio is not None and audio.size:
                    clip = self.sampler.save(
                        audio,
                        self.detector.cfg.sample_rate,
                        "flagged",
                        tour_uuid=det["tour_uuid"],
                        detection_uuid=detection_uuid,
                    )
            else:
                clip = "existing"
        return {"feedback": fid, "clip": clip}

    def level(self) -> float:
        src = self.source
        return float(getattr(getattr(src, "stats", None), "level_dbfs", -120.0))


def top_species(r: WindowResult, labels: Any, k: int = 5) -> list[tuple[Any, float]]:
    order = np.argsort(-r.probs)[:k]
    return [(labels[int(j)], float(r.probs[j])) for j in order]
