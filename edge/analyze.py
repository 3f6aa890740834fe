"""``silencio edge analyze``: recordings (files, and folders searched recursively) through the agent,
one tour per recording, as an ecologist expects:

* an input that cannot be analysed (missing, not audio, a folder without recordings, a file that
  decodes to nothing) is reported with its reason, leaves **no tour** behind, and makes the run fail;
* a recording that was cut short (truncated) is analysed as far as it decodes, with a warning;
* each recording's start comes from ``start`` (one recording only), its file name
  (``SITE_YYYYMMDD_HHMMSS``, ``YYYYMMDD_HHMMSS``) or its modification time, and is stored with it;
  detection times are that start plus the offset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from edge.agent import Agent
from edge.capture import FileSource
from edge.errors import InputError
from edge.exports import write_csv, write_raven
from edge.records import Detection, Recording
from shared_features.audio import AUDIO_EXTENSIONS
from shared_features.errors import SilencioFeatureError

log = logging.getLogger(__name__)


@dataclass
class FileResult:
    path: Path
    error: str | None = None
    tour_uuid: str | None = None
    recording: Recording | None = None
    seconds: float = 0.0
    windows: int = 0
    detections: list[Detection] = field(default_factory=list)
    warning: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def species(self) -> int:
        return len({d.species_code for d in self.detections})


@dataclass
class AnalyzeReport:
    files: list[FileResult] = field(default_factory=list)

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if not f.ok]


def expand_inputs(paths: Iterable[Path]) -> tuple[list[Path], list[FileResult]]:
    """Recordings to analyse (folders searched recursively, audio extensions only, sorted) and the
    inputs that are not analysable at all."""
    files: list[Path] = []
    bad: list[FileResult] = []
    for p in paths:
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS and not f.name.startswith(".")
            )
            if not found:
                exts = ", ".join(sorted(AUDIO_EXTENSIONS))
                bad.append(FileResult(p, error=f"{p}: a folder with no recordings ({exts}) in it"))
            files.extend(found)
        elif p.is_file():
            files.append(p)
        elif p.exists():
            bad.append(FileResult(p, error=f"{p}: not a regular file"))
        else:
            bad.append(FileResult(p, error=f"{p}: no such file or folder"))
    return files, bad


def analyze(
    agent: Agent,
    paths: Iterable[Path],
    *,
    start: datetime | None = None,
    realtime: bool = False,
    out: Path | None = None,
    on_file: Callable[[FileResult], None] | None = None,
) -> AnalyzeReport:
    """Analyse every recording under ``paths``; ``out``: write ``<name>.selections.txt`` (Raven) and
    ``<name>.csv`` per recording there."""
    files, bad = expand_inputs(paths)
    if start is not None and len(files) > 1:
        raise InputError(f"--start gives one recording's start time, but {len(files)} recordings were given")
    report = AnalyzeReport(list(bad))
    for r in bad:
        if on_file is not None:
            on_file(r)
    tz = agent.settings.recorder_timezone
    for f in files:
        agent.end_tour()
        res = FileResult(f)
        try:
            run = agent.run(FileSource(f, realtime=realtime, start=start, tz=tz), location=f.name)
        except SilencioFeatureError as exc:  # not audio, empty, undecodable from the first byte
            res.error = str(exc)
            agent.end_tour()  # nothing was started: a failed input leaves no tour
        else:
            tour = agent.tour_uuid
            agent.end_tour()
            if tour is None:
                res.error = f"{f}: no audio decoded"
            else:
                res.tour_uuid = tour
                res.seconds, res.windows = run.seconds, run.windows
                res.detections = sorted(agent.store.detections(tour), key=lambda d: d.offset_start)
                recs = agent.store.recordings(tour)
                res.recording = recs[0] if recs else None
                res.warning = "; ".join(w for _, w in run.warnings) or None
                if out is not None:
                    out.mkdir(parents=True, exist_ok=True)
                    rows = agent.store.export_rows(tour)
                    write_raven(out / f"{f.stem}.selections.txt", rows, agent.scorer.labels)
                    write_csv(out / f"{f.stem}.csv", rows, agent.scorer.labels)
        report.files.append(res)
        if on_file is not None:
            on_file(res)
    return report
