"""Recorder archives through the full ensemble: ``silencio cloud analyze-archive``.

Every recording under a folder (WAV, FLAC, OGG, MP3, …; hours to years of audio) is decoded in
chunks (:func:`shared_features.iter_audio_chunks`, bounded memory), cut into the shared 5 s
windows (:func:`shared_features.windows.iter_windows`) and scored in batches by the **same model
package runtime as the cloud service**: the model is resolved and loaded by
:meth:`cloud.inference.Identifier.load` (a package directory, ``models:/…`` from the MLflow
registry, or, with neither, BirdNET v2.4 alone over the packaged taxonomy) and windows are
scored by :meth:`Identifier.scores` (``ModelPackage.predict``). Outputs: :mod:`cloud.archive_output`.

Work is cut into *tasks* of about ``segment_seconds`` of audio: a long PCM recording (WAV, FLAC,
AIFF; exact seeking) is split into segments at multiples of the window, short files are packed
together so that a task amortises its overhead. Compressed formats (MP3, OGG) are read in one
piece, because their decoders seek only approximately. The same tasks run either

* locally, in this process (the default), or
* with ``ray=True`` on Ray Data: a dataset of tasks → ``map_batches`` over an actor pool of
  ``workers`` actors, each holding one loaded package; a local Ray cluster, or the cluster at
  ``RAY_ADDRESS`` (whose nodes must see the archive and the model under the same paths).

Both paths run the same :class:`WindowScorer` on the same tasks, so they give the same rows.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from cloud.archive_output import ArchiveError, ArchiveOutput, Detection, FileEntry, FinishedFile
from cloud.inference import Identifier
from shared_features import DEFAULT, AudioError, audio_info, iter_audio_chunks
from shared_features.audio import AUDIO_EXTENSIONS
from shared_features.windows import iter_windows

log = logging.getLogger(__name__)

#: Audio per task (and per segment of a long PCM recording), seconds; a multiple of the window.
SEGMENT_SECONDS = 600.0
#: Windows scored per call of the package.
WINDOW_BATCH = 32
#: Source audio decoded at once (bounds memory together with the window batch).
CHUNK_SECONDS = 30.0
#: Containers libsndfile seeks in exactly (``AudioInfo.format``): these are split into segments.
SEEKABLE = frozenset({"wav", "wavex", "rf64", "w64", "flac", "aiff", "aifc", "caf", "au"})
#: A file that decodes to this much less audio than its header declares is reported as truncated.
TRUNCATION_TOLERANCE_S = 1.0
#: Parameters that must match to resume into an output folder.
RESUME_KEYS = ("archive", "threshold", "window_seconds", "window_stride_seconds", "segment_seconds", "model")

_STAMP = re.compile(r"(?:^|[_-])(\d{8})[_-](\d{6})(?=$|[_.-])")


def recording_start(name: str) -> datetime | None:
    """The start time a recorder wrote into a file name: BirdCLEF ``SITE_YYYYMMDD_HHMMSS``,
    AudioMoth ``YYYYMMDD_HHMMSS`` (also Song Meter ``PREFIX_YYYYMMDD_HHMMSS``); None otherwise.
    Naive: the time zone is whatever the recorder was set to."""
    m = _STAMP.search(Path(name).stem)
    if m is None:
        return None
    try:
        return datetime.strptime(m[1] + m[2], "%Y%m%d%H%M%S")
    except ValueError:
        return None


def find_recordings(root: Path, exclude: Path | None = None) -> tuple[list[Path], int]:
    """Recordings under ``root`` (recursive, sorted; files with an audio extension, hidden files
    and folders skipped, ``exclude`` skipped) and the number of other files ignored."""
    found: list[Path] = []
    ignored = 0
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and (exclude is None or (here / d).resolve() != exclude)
        )
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in AUDIO_EXTENSIONS:
                found.append(here / name)
            else:
                ignored += 1
    return found, ignored


def wav_declared_frames(path: Path) -> int | None:
    """Frames a RIFF/WAVE header declares in its ``data`` chunk (libsndfile silently shortens a
    truncated WAV to the bytes present, so a truncation shows only here); None when unknown."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = 0
            while True:
                ch = fh.read(8)
                if len(ch) < 8:
                    return None
                cid, size = ch[:4], int.from_bytes(ch[4:], "little")
                if cid == b"fmt ":
                    fmt = fh.read(size)
                    block_align = int.from_bytes(fmt[12:14], "little") if len(fmt) >= 14 else 0
                    if size % 2:
                        fh.seek(1, os.SEEK_CUR)
                    continue
                if cid == b"data":
                    if not block_align or size in (0, 0xFFFFFFFF):  # streaming writers leave these
                        return None
                    return size // block_align
                fh.seek(size + size % 2, os.SEEK_CUR)
    except OSError:
        return None


# ---------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Segment:
    """Part of one recording: source seconds ``[start, stop)`` (``stop`` None: to the end)."""

    path: str
    rel: str
    index: int
    start: float
    stop: float | None
    seconds: float  # declared audio in this segment (for the progress bar)


@dataclass
class Planned:
    rel: str
    path: Path
    size: int
    declared_seconds: float
    recorded_at: datetime | None
    segments: int


def plan_file(path: Path, rel: str, segment_seconds: float) -> tuple[Planned, list[Segment]]:
    """Header → segments. Raises :class:`AudioError` (or OSError) for a file that does not open."""
    info = audio_info(path)
    size = path.stat().st_size
    seconds = info.duration
    declared = seconds
    if info.format in ("wav", "wavex"):
        frames = wav_declared_frames(path)
        if frames is not None and info.sample_rate:
            declared = max(seconds, frames / info.sample_rate)
    if info.format in SEEKABLE and seconds > 1.5 * segment_seconds:
        n = math.ceil(seconds / segment_seconds)
        bounds = [(k * segment_seconds, (k + 1) * segment_seconds if k < n - 1 else None) for k in range(n)]
    else:
        bounds = [(0.0, None)]
    segs = [
        Segment(str(path), rel, k, a, b, (b if b is not None else seconds) - a)
        for k, (a, b) in enumerate(bounds)
    ]
    return Planned(rel, path, size, declared, recording_start(path.name), len(segs)), segs


def pack_tasks(segments: Sequence[Segment], target_seconds: float) -> list[list[Segment]]:
    """Consecutive segments packed into tasks of about ``target_seconds`` of audio."""
    tasks: list[list[Segment]] = []
    cur: list[Segment] = []
    acc = 0.0
    for s in segments:
        cur.append(s)
        acc += s.seconds
        if acc >= target_seconds:
            tasks.append(cur)
            cur, acc = [], 0.0
    if cur:
        tasks.append(cur)
    return tasks


# ---------------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class ModelSpec:
    """Which model to load, exactly as the service resolves it (:meth:`Identifier.load`)."""

    model: str | None
    home: Path
    taxonomy: Path
    threads: int = 1

    def load(self, home: Path | None = None) -> Identifier:
        return Identifier.load(self.model, home or self.home, self.taxonomy, self.threads)


def model_identity(ident: Identifier) -> dict[str, Any]:
    pkg = ident.package
    return {
        "name": pkg.name,
        "version": pkg.version,
        "members": [m.name for m in pkg.members],
        "labels_sha256": pkg.labels.digest(),
        "feature_fingerprint": pkg.feature_fingerprint,
        "birdnet_only": ident.birdnet_only,
    }


@dataclass
class SegmentResult:
    rel: str
    index: int
    seconds: float = 0.0  # audio decoded
    windows: int = 0
    error: str = ""
    reason: str = ""
    detections: list[tuple[float, float, int, float]] = field(default_factory=list)


class WindowScorer:
    """Decode → window → score for a list of segments, holding one loaded package. The Ray Data
    UDF (one instance per actor: ``__call__`` on a batch of tasks) and the local executor
    (``score_task``) are this one class."""

    def __init__(
        self,
        spec: ModelSpec,
        threshold: float,
        expect: dict[str, Any] | None = None,
        *,
        identifier: Identifier | None = None,
        batch_windows: int = WINDOW_BATCH,
    ) -> None:
        if identifier is None:
            if spec.model is None:
                # BirdNET-only: each worker writes its own copy of the (tiny) package manifest,
                # so that concurrent actors never read a file another one is rewriting.
                self._tmp = tempfile.TemporaryDirectory(prefix="silencio-archive-")
                identifier = spec.load(Path(self._tmp.name))
            else:
                identifier = spec.load()
        self.identifier = identifier
        got = model_identity(identifier)
        if expect is not None and got != expect:
            raise ArchiveError(f"a worker loaded {got}, the driver {expect}: same model needed everywhere")
        self.threshold = threshold
        self.batch_windows = batch_windows

    def score_task(self, segments: Sequence[Segment]) -> list[SegmentResult]:
        cfg = DEFAULT
        results = [SegmentResult(s.rel, s.index) for s in segments]
        buf: list[tuple[int, float, float, np.ndarray]] = []

        def flush() -> None:
            if not buf:
                return
            probs, _ = self.identifier.scores(np.stack([b[3] for b in buf]))
            for (i, start, end, _x), p in zip(buf, probs):
                for j in np.flatnonzero(p >= self.threshold):
                    results[i].detections.append((start, end, int(j), float(p[j])))
            buf.clear()

        for i, seg in enumerate(segments):
            res = results[i]
            decoded = [0]

            def chunks(seg: Segment = seg, decoded: list[int] = decoded) -> Iterator[np.ndarray]:
                for c in iter_audio_chunks(
                    seg.path, cfg, chunk_seconds=CHUNK_SECONDS, start_seconds=seg.start, stop_seconds=seg.stop
                ):
                    decoded[0] += c.size
                    yield c

            windows = iter_windows(chunks(), cfg)
            while True:
                try:
                    w, x = next(windows)
                except StopIteration:
                    break
                except Exception as exc:  # noqa: BLE001 - a bad file is recorded with its reason, never fatal
                    res.error, res.reason = type(exc).__name__, _reason(exc)
                    break
                buf.append((i, seg.start + w.start, seg.start + w.start + w.valid, x))
                res.windows += 1
                if len(buf) >= self.batch_windows:
                    flush()  # outside the try: a model error is not a file's fault, it stops the run
            res.seconds = decoded[0] / cfg.sample_rate
        flush()
        return results

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for task in batch["task"]:
            segs = [Segment(**d) for d in json.loads(str(task))]
            out.append(json.dumps([asdict(r) for r in self.score_task(segs)]))
        return {"result": np.array(out, dtype=object)}


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, AudioError) and text.startswith(f"{exc.source}: "):
        text = text[len(exc.source) + 2 :]
    return text or type(exc).__name__


# ---------------------------------------------------------------------------------- executors
def _local_results(tasks: list[list[Segment]], scorer: WindowScorer) -> Iterator[SegmentResult]:
    for task in tasks:
        yield from scorer.score_task(task)


def require_ray() -> None:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise ArchiveError("--ray needs Ray Data: pip install 'silencio[train]'") from None


def ray_init(workers: int) -> bool:
    """Connect to ``RAY_ADDRESS``, or start a local cluster; True when this call started Ray."""
    require_ray()
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        # the workers of a real cluster resolve models:/ URIs against the same tracking server
        env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
        ray.init(address=address, runtime_env={"env_vars": env} if env else None, **kw)
    else:
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, workers), **kw)
    return True


def _ray_results(
    tasks: list[list[Segment]], spec: ModelSpec, threshold: float, expect: dict[str, Any], workers: int
) -> Iterator[SegmentResult]:
    import ray
    import ray.data

    started = ray_init(workers)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notes would break our bar
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours counts files and audio hours
        # one task per block: the actor pool takes blocks one at a time, so this balances the load
        items = ray.data.from_items(
            [{"task": json.dumps([asdict(s) for s in t])} for t in tasks], override_num_blocks=len(tasks)
        )
        ds = items.map_batches(
            WindowScorer,
            fn_constructor_kwargs={"spec": spec, "threshold": threshold, "expect": expect},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(workers, len(tasks))),  # no idle actors
            num_cpus=spec.threads,
        )
        rows = iter(ds.iter_rows())
        while True:
            try:
                row = next(rows)
            except StopIteration:
                break
            except ArchiveError:
                raise
            except Exception as exc:  # noqa: BLE001 - Ray wraps a worker's failure in its own types
                raise ArchiveError(
                    f"the Ray Data run stopped ({type(exc).__name__}: {exc}); the files finished so far "
                    "are recorded and a rerun resumes"
                ) from exc
            for r in json.loads(row["result"]):
                r["detections"] = [tuple(d) for d in r["detections"]]
                yield SegmentResult(**r)
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------------------------- driver
@dataclass
class ArchiveReport:
    archive: Path
    out: Path
    model: dict[str, Any]
    files_found: int
    files_skipped: int  # finished by an earlier run
    files_done: int  # this run, analysed whole
    files_partial: int  # this run, analysed in part
    files_failed: int  # this run, unreadable
    other_files: int  # without an audio extension, ignored
    audio_hours: float  # this run
    wall_seconds: float
    totals: dict[str, Any]  # the whole output folder, every run so far
    outputs: dict[str, Path]
    ray: bool
    workers: int

    @property
    def hours_per_hour(self) -> float:
        return self.audio_hours * 3600 / self.wall_seconds if self.wall_seconds else 0.0


@dataclass
class _Open:
    planned: Planned
    remaining: int
    seconds: float = 0.0
    windows: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)


def _finish(o: _Open) -> FinishedFile:
    p = o.planned
    status, error, reason = "done", "", ""
    if o.errors:
        error = o.errors[0][0]
        reason = "; ".join(r for _, r in o.errors)
        status = "partial" if o.windows else "failed"
        if o.windows:
            reason += f" (the first {o.seconds:.1f} s decoded and analysed)"
    elif o.seconds < p.declared_seconds - TRUNCATION_TOLERANCE_S:
        status, error = "partial", "Truncated"
        reason = (
            f"truncated: the header declares {p.declared_seconds:.1f} s, {o.seconds:.1f} s decoded; "
            "the decoded audio is analysed"
        )
    entry = FileEntry(
        file=p.rel,
        size=p.size,
        status=status,
        seconds=round(o.seconds, 3),
        declared_seconds=round(p.declared_seconds, 3),
        windows=o.windows,
        detections=len(o.detections),
        error=error,
        reason=reason,
        finished_at=datetime.now().isoformat(timespec="seconds"),
    )
    return FinishedFile(entry, p.path, p.recorded_at, o.detections)


def analyze_archive(
    archive: Path,
    out: Path,
    spec: ModelSpec,
    *,
    threshold: float = 0.5,
    ray: bool = False,
    workers: int = 1,
    retry_failed: bool = False,
    progress: bool = False,
    segment_seconds: float = SEGMENT_SECONDS,
    flush_seconds: float = 30.0,
    identifier: Identifier | None = None,
) -> ArchiveReport:
    """Analyse every recording under ``archive`` into ``out`` (resuming what ``out`` holds).

    ``workers``: with ``ray`` the size of the actor pool (one package and ``spec.threads``
    inference threads each); locally, one process, one package with ``workers`` threads. Bad
    files never stop the run. ``flush_seconds``: finished files are recorded at least this often
    (what a killed run can lose). ``identifier``: an already loaded model for a local run (tests
    pass a fake scorer).
    """
    t0 = time.perf_counter()
    if not 0 < threshold <= 1:
        raise ArchiveError(f"threshold must be in (0, 1], got {threshold}")
    if workers < 1:
        raise ArchiveError(f"workers must be at least 1, got {workers}")
    if segment_seconds < DEFAULT.window_seconds or segment_seconds % DEFAULT.window_stride_seconds:
        raise ArchiveError(f"segment_seconds must be a multiple of {DEFAULT.window_stride_seconds:g} s")
    archive = Path(archive).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    if not archive.is_dir():
        raise ArchiveError(f"{archive}: no such folder")
    if ray:
        require_ray()
        if identifier is not None:
            raise ArchiveError("a preloaded model runs only locally; Ray workers load the spec themselves")
    # Locally, ``workers`` becomes the inference threads of the one package in this process.
    run_spec = spec if ray else replace(spec, threads=spec.threads * workers)
    # The driver loads the model first: a model that cannot load fails before any work.
    ident = identifier or run_spec.load()
    job = _Job(
        archive,
        out,
        run_spec,
        ident,
        model_identity(ident),
        threshold,
        ray,
        workers,
        retry_failed,
        progress,
        segment_seconds,
        flush_seconds,
    )
    cfg = DEFAULT
    params = {
        "archive": str(archive),
        "threshold": threshold,
        "window_seconds": cfg.window_seconds,
        "window_stride_seconds": cfg.window_stride_seconds,
        "segment_seconds": segment_seconds,
        "model": job.expect,
        "model_spec": spec.model or "(default: BirdNET v2.4 only over the taxonomy)",
        "taxonomy": str(spec.taxonomy),
        "feature_config": cfg.to_dict(),
        "ray": ray,
        "workers": workers,
        "started_at": datetime.now().isoformat(timespec="seconds"),
    }
    output = ArchiveOutput(out, ident.labels, low_hz=cfg.fmin, high_hz=cfg.fmax)
    with output.lock():
        output.check_params(params, RESUME_KEYS)
        plan = _plan(job, output)
        counts = _execute(job, output, plan)
        totals = output.finalize(
            {
                "archive": str(archive),
                "model": job.expect,
                "threshold": threshold,
                "window_seconds": cfg.window_seconds,
            }
        )
        wall = time.perf_counter() - t0
        this_run = {**counts, "files_skipped": plan.skipped, "audio_hours": round(counts["audio_hours"], 4)}
        run = {
            **params,
            "finished_at": datetime.now().isoformat(timespec="seconds"),
            "wall_seconds": round(wall, 2),
            "this_run": this_run,
            "totals": totals,
        }
        (out / "run.json").write_text(json.dumps(run, indent=2, default=str) + "\n", encoding="utf-8")
    names = (
        "detections.parquet",
        "detections.csv",
        "summary.csv",
        "summary.md",
        "failed.csv",
        "raven",
        "manifest.jsonl",
        "run.json",
    )
    return ArchiveReport(
        archive=archive,
        out=out,
        model=job.expect,
        files_found=plan.found,
        files_skipped=plan.skipped,
        files_done=counts["files_done"],
        files_partial=counts["files_partial"],
        files_failed=counts["files_failed"],
        other_files=plan.other,
        audio_hours=counts["audio_hours"],
        wall_seconds=wall,
        totals=totals,
        outputs={name: out / name for name in names},
        ray=ray,
        workers=workers,
    )


@dataclass(frozen=True)
class _Job:
    archive: Path
    out: Path
    spec: ModelSpec
    ident: Identifier
    expect: dict[str, Any]
    threshold: float
    ray: bool
    workers: int
    retry_failed: bool
    progress: bool
    segment_seconds: float
    flush_seconds: float


@dataclass
class _Plan:
    found: int
    other: int  # files without an audio extension
    skipped: int  # finished by an earlier run
    failed: int  # unreadable headers, recorded at once
    open: dict[str, _Open]
    segments: list[Segment]


def _plan(job: _Job, output: ArchiveOutput) -> _Plan:
    """Find the recordings, skip the finished ones, read the others' headers (unreadable ones are
    recorded as failed at once) and cut them into segments."""
    files, other = find_recordings(job.archive, exclude=job.out)
    plan = _Plan(len(files), other, 0, 0, {}, [])
    for path in files:
        rel = path.relative_to(job.archive).as_posix()
        try:
            size = path.stat().st_size
            if output.manifest.finished(rel, size, job.retry_failed):
                plan.skipped += 1
                continue
            p, segs = plan_file(path, rel, job.segment_seconds)
        except Exception as exc:  # noqa: BLE001 - an unreadable header: listed, never fatal
            plan.failed += 1
            size = path.stat().st_size if path.exists() else 0
            now = datetime.now().isoformat(timespec="seconds")
            output.add_failed(
                FileEntry(rel, size, "failed", error=type(exc).__name__, reason=_reason(exc), finished_at=now)
            )
            continue
        plan.open[rel] = _Open(p, p.segments)
        plan.segments.extend(segs)
    output.flush()
    return plan


def _execute(job: _Job, output: ArchiveOutput, plan: _Plan) -> dict[str, Any]:
    """Run the tasks (locally or on Ray) and finish each file when its last segment is back."""
    from tqdm import tqdm

    total_s = sum(s.seconds for s in plan.segments)
    target = min(job.segment_seconds, max(30.0, total_s / (4 * job.workers)))
    tasks = pack_tasks(plan.segments, target)
    log.info(
        "%s: %d recordings (%d finished before, %d unreadable), %.2f h of audio to analyse in %d tasks; %s",
        job.archive,
        plan.found,
        plan.skipped,
        plan.failed,
        total_s / 3600,
        len(tasks),
        job.ident.package.describe(),
    )
    n_files = len(plan.open)
    bar = tqdm(
        total=total_s,
        unit="h",
        unit_scale=1 / 3600,  # counts seconds, shows audio hours
        desc=f"files 0/{n_files}",
        disable=not job.progress,
        dynamic_ncols=True,
        mininterval=0.5,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.2f}/{total:.2f} h of audio [{elapsed}<{remaining}]",
    )
    counts: dict[str, Any] = {
        "files_done": 0,
        "files_partial": 0,
        "files_failed": plan.failed,
        "audio_hours": 0.0,
    }
    seg_seconds = {(s.rel, s.index): s.seconds for s in plan.segments}
    results: Iterator[SegmentResult] = iter(())
    try:
        if tasks and job.ray:
            results = _ray_results(tasks, job.spec, job.threshold, job.expect, job.workers)
        elif tasks:
            results = _local_results(tasks, WindowScorer(job.spec, job.threshold, identifier=job.ident))
        for r in results:
            o = plan.open[r.rel]
            o.remaining -= 1
            o.seconds += r.seconds
            o.windows += r.windows
            if r.error:
                o.errors.append((r.error, r.reason))
            o.detections.extend(Detection(*d) for d in r.detections)
            bar.update(min(seg_seconds[(r.rel, r.index)], total_s - bar.n))
            if o.remaining:
                continue
            f = _finish(plan.open.pop(r.rel))
            counts["audio_hours"] += f.entry.seconds / 3600
            counts[f"files_{f.entry.status}"] += 1
            if f.entry.status == "failed":
                output.add_failed(f.entry)
            else:
                output.add(f)
            bar.set_description_str(f"files {n_files - len(plan.open)}/{n_files}", refresh=False)
            if output.should_flush(max_seconds=job.flush_seconds):
                output.flush()
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # stops the Ray run (and the cluster it started) now, not at garbage collection
        bar.close()
        output.flush()  # whatever finished is kept, also when the run stops with an error
    return counts
