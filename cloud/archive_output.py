"""What ``analyze-archive`` writes, and how a killed run resumes: the manifest, the parts, the
Raven selection tables, and the final tables rebuilt from the parts.

Layout of ``OUT``::

    run.json                 parameters of the analysis (archive, model, threshold, windows)
    manifest.jsonl           one line per finished file (done / partial / failed), appended
    parts/part-*.parquet     detections of the files finished since the last flush
    raven/<dir>/<file>.Table.1.selections.txt   one Raven selection table per analysed file
    detections.parquet, detections.csv          every window-species score ≥ threshold
    failed.csv               files that could not be read, or only in part, with the reason
    summary.csv, summary.md  per species: detections, files, first / last heard, max probability

Crash safety: a part and the Raven tables of its files are written (to a temporary name, then
renamed) *before* the manifest line that names them; a manifest line is appended and fsynced. A
run killed at any point therefore leaves finished files recorded with all their rows, and at
worst a part that no manifest line names (deleted on the next run) or a last manifest line cut
short (ignored). The final tables are rebuilt from the parts the manifest names, one part at a
time (bounded memory), every time a run ends.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cloud.errors import CloudError
from shared_features import LabelSpace

log = logging.getLogger(__name__)

#: Columns of ``detections.parquet`` / ``detections.csv`` (and of every part), in order.
DETECTION_COLUMNS = (
    "file",
    "start_s",
    "end_s",
    "recorded_at",
    "code",
    "scientific_name",
    "common_name",
    "taxon_class",
    "probability",
)
SUMMARY_COLUMNS = (
    "code",
    "scientific_name",
    "common_name",
    "taxon_class",
    "detections",
    "files",
    "first_heard",
    "last_heard",
    "max_probability",
    "best_file",
    "best_start_s",
)
FAILED_COLUMNS = ("file", "status", "error", "reason", "seconds_analysed", "seconds_declared")
RAVEN_COLUMNS = (
    "Selection",
    "View",
    "Channel",
    "Begin Time (s)",
    "End Time (s)",
    "Low Freq (Hz)",
    "High Freq (Hz)",
    "Begin Path",
    "Begin File",
    "File Offset (s)",
    "Species Code",
    "Scientific Name",
    "Common Name",
    "Taxon Class",
    "Probability",
)
#: Statuses of a manifest entry. ``partial``: part of the file was analysed (truncated, or a
#: decoding error after some audio); its detections are kept and it is listed in failed.csv.
STATUSES = ("done", "partial", "failed")


class ArchiveError(CloudError):
    """An archive analysis that cannot start or go on: missing folder, an output folder made with
    other parameters, Ray missing, a worker that loaded another model. Bad *files* are never an
    ArchiveError; they are listed in ``failed.csv``."""

    status = 400


@dataclass
class FileEntry:
    """One manifest line: a file that this output folder has finished with."""

    file: str  # path relative to the archive folder, POSIX separators
    size: int
    status: str
    seconds: float = 0.0  # audio decoded and analysed
    declared_seconds: float = 0.0  # what the header says
    windows: int = 0
    detections: int = 0
    part: str | None = None  # parts/… holding its rows (None: no rows)
    error: str = ""
    reason: str = ""
    finished_at: str = ""


@dataclass
class Detection:
    """One window-species score at or above the threshold. Times are seconds into the file;
    ``end`` is where the window's real audio ends (a padded last window ends at the file's end)."""

    start: float
    end: float
    index: int  # class index in the package's label space
    probability: float


@dataclass
class FinishedFile:
    entry: FileEntry
    path: Path
    recorded_at: datetime | None
    detections: list[Detection] = field(default_factory=list)


def _atomic_write(path: Path, write: Any, mode: str = "w") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    kw: dict[str, Any] = {"encoding": "utf-8", "newline": ""} if "b" not in mode else {}
    with open(tmp, mode, **kw) as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Manifest:
    """``manifest.jsonl``: the latest line per file wins (a changed file is analysed again)."""

    def __init__(self, path: Path, *, load: bool = True) -> None:
        self.path = path
        self.entries: dict[str, FileEntry] = {}
        if not load or not path.exists():
            return
        data = path.read_bytes()
        good = 0  # bytes up to the end of the last complete line
        for line in data.splitlines(keepends=True):
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("no end of line")
                e = FileEntry(**json.loads(line))
            except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                # a line cut short by a killed run, or damage: that file is simply analysed again
                log.warning("%s: ignoring a malformed line at byte %d (%s)", path, good, exc)
                if not line.endswith(b"\n"):
                    break
                good += len(line)
                continue
            self.entries[e.file] = e
            good += len(line)
        if good < len(data):
            with open(path, "r+b") as fh:  # drop the cut-short tail so that appends start a new line
                fh.truncate(good)

    def finished(self, rel: str, size: int, retry_failed: bool = False) -> bool:
        e = self.entries.get(rel)
        if e is None or e.size != size:
            return False
        return not (retry_failed and e.status != "done")

    def append(self, entries: Sequence[FileEntry]) -> None:
        if not entries:
            return
        text = "".join(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in entries)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        for e in entries:
            self.entries[e.file] = e


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("file", pa.string()),
            ("start_s", pa.float64()),
            ("end_s", pa.float64()),
            ("recorded_at", pa.timestamp("ms")),
            ("code", pa.string()),
            ("scientific_name", pa.string()),
            ("common_name", pa.string()),
            ("taxon_class", pa.string()),
            ("probability", pa.float64()),
        ]
    )


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow comes with the cloud and train extras
        raise ArchiveError("writing Parquet needs pyarrow: pip install 'silencio[cloud]'") from None
    return pa, pq


class ArchiveOutput:
    """Writes one analysis' outputs under ``out`` (see the module docstring for the layout)."""

    def __init__(self, out: Path, labels: LabelSpace, *, low_hz: float, high_hz: float) -> None:
        self.out = out
        self.labels = labels
        self.low_hz, self.high_hz = low_hz, high_hz
        out.mkdir(parents=True, exist_ok=True)
        self.parts = out / "parts"
        self.raven = out / "raven"
        self.manifest = Manifest(out / "manifest.jsonl", load=False)  # read under the lock
        self._pending: list[FinishedFile] = []
        self._failed: list[FileEntry] = []
        self._seq = 0
        self._run = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        self._last_flush = time.monotonic()

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One run per output folder at a time (an advisory lock the OS drops when a run dies)."""
        import fcntl

        with open(self.out / ".lock", "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ArchiveError(f"{self.out}: another analysis is writing this folder") from None
            self.manifest = Manifest(self.manifest.path)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ parameters
    def check_params(self, params: dict[str, Any], keys: Iterable[str]) -> None:
        """Refuse to resume into a folder made with other parameters; write ``run.json``."""
        path = self.out / "run.json"
        if path.exists() and self.manifest.entries:
            old = json.loads(path.read_text(encoding="utf-8"))
            diff = [k for k in keys if old.get(k) != params.get(k)]
            if diff:
                shown = "; ".join(f"{k}: {old.get(k)!r} then, {params.get(k)!r} now" for k in diff)
                raise ArchiveError(
                    f"{self.out} holds an analysis made with other parameters ({shown}); "
                    "resume with the same options or choose another --out"
                )
        _atomic_write(path, lambda fh: fh.write(json.dumps(params, indent=2, default=str) + "\n"))

    # ------------------------------------------------------------------ files as they finish
    def add(self, done: FinishedFile) -> None:
        self._pending.append(done)

    def add_failed(self, entry: FileEntry) -> None:
        self._failed.append(entry)

    def should_flush(self, max_files: int = 200, max_rows: int = 20_000, max_seconds: float = 20.0) -> bool:
        n = len(self._pending) + len(self._failed)
        if not n:
            return False
        rows = sum(len(f.detections) for f in self._pending)
        return n >= max_files or rows >= max_rows or time.monotonic() - self._last_flush >= max_seconds

    def flush(self) -> None:
        """Part, then Raven tables, then manifest lines (see the module docstring)."""
        pending, failed = self._pending, self._failed
        self._pending, self._failed = [], []
        self._last_flush = time.monotonic()
        if not pending and not failed:
            return
        part = None
        rows = [r for f in pending for r in self._rows(f)]
        if rows:
            pa, pq = _pyarrow()
            self._seq += 1
            part = f"parts/part-{self._run}-{self._seq:05d}.parquet"
            table = pa.Table.from_pylist(rows, schema=_schema())
            _atomic_write(self.out / part, lambda fh: pq.write_table(table, fh), "wb")
        for f in pending:
            self._write_raven(f)
            f.entry.part = part if f.detections else None
        self.manifest.append([f.entry for f in pending] + failed)

    def _rows(self, f: FinishedFile) -> list[dict[str, Any]]:
        out = []
        for d in sorted(f.detections, key=lambda d: (d.start, -d.probability)):
            s = self.labels[d.index]
            out.append(
                {
                    "file": f.entry.file,
                    "start_s": round(d.start, 3),
                    "end_s": round(d.end, 3),
                    "recorded_at": f.recorded_at + timedelta(seconds=d.start) if f.recorded_at else None,
                    "code": s.code,
                    "scientific_name": s.scientific_name,
                    "common_name": s.common_name,
                    "taxon_class": s.taxon_class,
                    "probability": round(d.probability, 4),
                }
            )
        return out

    def raven_path(self, rel: str) -> Path:
        return self.raven / f"{rel}.Table.1.selections.txt"

    def _write_raven(self, f: FinishedFile) -> None:
        def write(fh: Any) -> None:
            w = csv.writer(fh, delimiter="\t", lineterminator="\n")
            w.writerow(RAVEN_COLUMNS)
            dets = sorted(f.detections, key=lambda d: (d.start, -d.probability))
            for n, d in enumerate(dets, 1):
                s = self.labels[d.index]
                w.writerow(
                    [
                        n,
                        "Spectrogram 1",
                        1,
                        f"{d.start:.3f}",
                        f"{d.end:.3f}",
                        f"{self.low_hz:g}",
                        f"{self.high_hz:g}",
                        str(f.path),
                        f.path.name,
                        f"{d.start:.3f}",
                        s.code,
                        s.scientific_name,
                        s.common_name,
                        s.taxon_class,
                        f"{d.probability:.4f}",
                    ]
                )

        _atomic_write(self.raven_path(f.entry.file), write)

    # ------------------------------------------------------------------ final tables
    def finalize(self, header: dict[str, Any]) -> dict[str, Any]:
        """Rebuild the final tables from the parts the manifest names; delete orphaned parts.
        Returns the totals over the whole folder (every run so far)."""
        self.flush()
        pa, pq = _pyarrow()
        import pyarrow.compute as pc

        entries = self.manifest.entries
        by_part: dict[str, list[str]] = {}
        for e in entries.values():
            if e.part:
                by_part.setdefault(e.part, []).append(e.file)
        if self.parts.is_dir():
            for p in self.parts.iterdir():
                if f"parts/{p.name}" not in by_part:
                    log.info("removing %s (no manifest line names it: a killed run or a re-analysed file)", p)
                    p.unlink()
        summary: dict[int, dict[str, Any]] = {}
        index = {s.code: i for i, s in enumerate(self.labels)}
        n_rows = 0
        pq_tmp = self.out / ".detections.parquet.tmp"
        csv_tmp = self.out / ".detections.csv.tmp"
        with (
            pq.ParquetWriter(pq_tmp, _schema()) as pw,
            open(csv_tmp, "w", newline="", encoding="utf-8") as fh,
        ):
            cw = csv.writer(fh)
            cw.writerow(DETECTION_COLUMNS)
            for part in sorted(by_part):
                t = pq.read_table(self.out / part, schema=_schema())
                t = t.filter(pc.is_in(t["file"], value_set=pa.array(sorted(by_part[part]))))
                pw.write_table(t)
                n_rows += t.num_rows
                for r in t.to_pylist():
                    at = r["recorded_at"]
                    cw.writerow(
                        [
                            r["file"],
                            f"{r['start_s']:.3f}",
                            f"{r['end_s']:.3f}",
                            at.isoformat(timespec="seconds") if at else "",
                            r["code"],
                            r["scientific_name"],
                            r["common_name"],
                            r["taxon_class"],
                            f"{r['probability']:.4f}",
                        ]
                    )
                    _summarise(summary, index[r["code"]], r)
        os.replace(pq_tmp, self.out / "detections.parquet")
        os.replace(csv_tmp, self.out / "detections.csv")
        bad = [e for e in entries.values() if e.status != "done"]
        _atomic_write(self.out / "failed.csv", lambda fh: _write_failed(fh, bad))
        species = self._species_rows(summary)
        _atomic_write(self.out / "summary.csv", lambda fh: _write_summary_csv(fh, species))
        analysed = [e for e in entries.values() if e.status != "failed"]
        totals = {
            "files_analysed": len(analysed),
            "files_partial": sum(e.status == "partial" for e in entries.values()),
            "files_failed": sum(e.status == "failed" for e in entries.values()),
            "audio_hours": round(sum(e.seconds for e in analysed) / 3600, 4),
            "windows": sum(e.windows for e in analysed),
            "detections": n_rows,
            "species": len(species),
        }
        _atomic_write(self.out / "summary.md", lambda fh: fh.write(_markdown(header, totals, species)))
        return totals

    def _species_rows(self, summary: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
        rows = []
        for i, agg in summary.items():
            s = self.labels[i]
            rows.append(
                {
                    "code": s.code,
                    "scientific_name": s.scientific_name,
                    "common_name": s.common_name,
                    "taxon_class": s.taxon_class,
                    "detections": agg["detections"],
                    "files": len(agg["files"]),
                    "first_heard": agg["first"].isoformat(timespec="seconds") if agg["first"] else "",
                    "last_heard": agg["last"].isoformat(timespec="seconds") if agg["last"] else "",
                    "max_probability": agg["max_p"],
                    "best_file": agg["best_file"],
                    "best_start_s": agg["best_start"],
                }
            )
        rows.sort(key=lambda r: (-r["detections"], -r["max_probability"], r["code"]))
        return rows


def _summarise(summary: dict[int, dict[str, Any]], i: int, r: dict[str, Any]) -> None:
    agg = summary.setdefault(i, {"detections": 0, "files": set(), "first": None, "last": None, "max_p": -1.0})
    agg["detections"] += 1
    agg["files"].add(r["file"])
    at = r["recorded_at"]
    if at is not None:
        agg["first"] = at if agg["first"] is None else min(agg["first"], at)
        agg["last"] = at if agg["last"] is None else max(agg["last"], at)
    if r["probability"] > agg["max_p"]:
        agg["max_p"], agg["best_file"], agg["best_start"] = r["probability"], r["file"], r["start_s"]


def _write_failed(fh: Any, bad: list[FileEntry]) -> None:
    w = csv.writer(fh)
    w.writerow(FAILED_COLUMNS)
    for e in sorted(bad, key=lambda e: e.file):
        w.writerow([e.file, e.status, e.error, e.reason, f"{e.seconds:.3f}", f"{e.declared_seconds:.3f}"])


def _write_summary_csv(fh: Any, species: list[dict[str, Any]]) -> None:
    w = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
    w.writeheader()
    for r in species:
        w.writerow(
            {
                **r,
                "max_probability": f"{r['max_probability']:.4f}",
                "best_start_s": f"{r['best_start_s']:.3f}",
            }
        )


def _markdown(header: dict[str, Any], totals: dict[str, Any], species: list[dict[str, Any]]) -> str:
    m = header["model"]
    lines = [
        f"# Archive analysis: {header['archive']}",
        "",
        f"- model: {m['name']} {m['version']} (members: {', '.join(m['members'])})"
        + (
            " — BirdNET v2.4 only, no trained ensemble: birds it knows, no frogs, insects or mammals"
            if m.get("birdnet_only")
            else ""
        ),
        f"- windows: {header['window_seconds']:g} s, threshold {header['threshold']:g}",
        f"- files: {totals['files_analysed']} analysed ({totals['files_partial']} only in part), "
        f"{totals['files_failed']} unreadable (failed.csv)",
        f"- audio: {totals['audio_hours']:.2f} h in {totals['windows']} windows; "
        f"{totals['detections']} detections of {totals['species']} species",
        "- first / last heard: recording time from the file name (`SITE_YYYYMMDD_HHMMSS` or "
        "`YYYYMMDD_HHMMSS`, time zone as the recorder wrote it); empty when no file name carries one",
        "",
        "| code | scientific name | common name | class | detections | files | first heard | last heard "
        "| max p | best file (offset s) |",
        "|---|---|---|---|---:|---:|---|---|---:|---|",
    ]
    for r in species:
        lines.append(
            f"| {r['code']} | *{r['scientific_name']}* | {r['common_name']} | {r['taxon_class']} "
            f"| {r['detections']} | {r['files']} | {r['first_heard']} | {r['last_heard']} "
            f"| {r['max_probability']:.3f} | {r['best_file']} ({r['best_start_s']:.1f}) |"
        )
    if not species:
        lines.append("| — | no species above the threshold | | | 0 | 0 | | | | |")
    return "\n".join(lines) + "\n"
