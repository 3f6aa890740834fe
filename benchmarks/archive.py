"""Archive analysis throughput: ``analyze_archive`` on this machine's real recordings.

    nice -n 10 .venv/bin/python benchmarks/archive.py [--hours 2] [--model PACKAGE|models:/…]

1. Throughput: every real recording under ``../shared/data`` (OGG, WAV, MP3; 32–48 kHz; 1.1 s to
   72 s), linked again and again into a temporary archive until it holds ``--hours`` of audio
   (symlinks: nothing is copied). Analysed locally in this process with one inference thread (the
   baseline), then on Ray Data (a local cluster) with 1 and 2 actors. Audio hours per hour of wall
   time, and the ratio to the baseline.
2. Per-file overhead: the same 10 minutes of real audio (the 60 s El Silencio soundscape) as 10
   files of 60 s and as 120 files of 5 s (cut into a temporary folder), locally and on Ray with
   2 actors: (wall(tiny) − wall(long)) / (120 − 10) is what one more file costs.

Every run starts from an empty output folder, and its wall time includes planning (headers),
loading the model, and writing every output (Parquet, CSV, Raven tables, summary). CPU time is
that of this process and every process it started (the Ray cluster and its actors; polled with
``psutil``), so that "audio hours per CPU hour" stays meaningful
when other work shares the cores and the wall-clock figures do not. The Ray
cluster is started once (its start-up is printed separately); each Ray run starts its actors.
The model is the service's default unless ``--model`` is given: with no trained ensemble that is
BirdNET v2.4 alone, and the table says so.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from benchmarks._table import table  # noqa: E402

DATA = _HERE.parents[1] / "shared" / "data"
SOUNDSCAPE = DATA / "birdclef2025_mini" / "train_soundscapes" / "H02_20230420_074000.ogg"


def recordings() -> list[tuple[Path, float]]:
    from shared_features import audio_info
    from shared_features.audio import AUDIO_EXTENSIONS

    out = []
    for p in sorted(DATA.rglob("*")):
        if p.suffix.lower() in AUDIO_EXTENSIONS:
            out.append((p, audio_info(p).duration))
    if not out:
        raise SystemExit(f"no real recordings under {DATA}")
    return out


def linked_archive(root: Path, hours: float) -> tuple[int, float]:
    recs = recordings()
    per_copy = sum(d for _, d in recs)
    copies = math.ceil(hours * 3600 / per_copy)
    for k in range(copies):
        for p, _ in recs:
            dst = root / f"copy{k:03d}" / p.relative_to(DATA)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(p)
    return copies * len(recs), copies * per_copy


def file_sets(root: Path) -> tuple[Path, Path]:
    """10 × the 60 s soundscape (linked) and the same audio as 120 × 5 s files (cut)."""
    import soundfile as sf

    long_dir, tiny_dir = root / "long", root / "tiny"
    long_dir.mkdir()
    tiny_dir.mkdir()
    x, sr = sf.read(SOUNDSCAPE, dtype="float32")
    for k in range(10):
        (long_dir / f"H02_{k:02d}.ogg").symlink_to(SOUNDSCAPE)
        for j in range(12):
            sf.write(tiny_dir / f"H02_{k:02d}_{j:02d}.ogg", x[j * 5 * sr : (j + 1) * 5 * sr], sr)
    return long_dir, tiny_dir


class CpuMeter:
    """CPU seconds (user + system) used by this process and its descendants (the Ray cluster and
    its actors) while running: polled every ``interval`` s, because actors that end are reaped
    without their times reaching a parent's ``children_*`` counters. A process that ends loses at
    most its last ``interval`` of CPU."""

    def __init__(self, interval: float = 0.2) -> None:
        import threading

        self.interval = interval
        self.first: dict[tuple[int, float], float] = {}
        self.last: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _poll(self, baseline: bool = False) -> None:
        import psutil

        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                key = (proc.pid, proc.create_time())
                t = proc.cpu_times()
            except psutil.Error:  # ended between the listing and the reading
                continue
            used = t.user + t.system
            self.first.setdefault(key, used if baseline else 0.0)
            self.last[key] = used

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def __enter__(self) -> CpuMeter:
        self._poll(baseline=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()

    @property
    def seconds(self) -> float:
        return sum(self.last[k] - self.first[k] for k in self.last)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=2.0, help="audio in the throughput archive (default 2)")
    ap.add_argument("--model", help="model package or models:/… (default: the service's default)")
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    import ray

    from cloud.archive import ArchiveReport, ModelSpec, analyze_archive
    from cloud.settings import CloudSettings

    with tempfile.TemporaryDirectory(prefix="silencio_archive_bench_") as tmp:
        root = Path(tmp)
        os.environ.setdefault("SILENCIO_HOME", str(root / "home"))
        s = CloudSettings()
        spec = ModelSpec(args.model or s.model, s.home, s.taxonomy_path)

        def run(archive: Path, out: Path, use_ray: bool, workers: int) -> tuple[ArchiveReport, float]:
            with CpuMeter() as meter:
                rep = analyze_archive(archive, out, spec, ray=use_ray, workers=workers)
            return rep, meter.seconds

        big = root / "archive"
        n_files, seconds = linked_archive(big, args.hours)
        long_dir, tiny_dir = file_sets(root)
        print(f"throughput archive: {n_files} files, {seconds / 3600:.2f} h of real audio (symlinks)")
        load0 = os.getloadavg()[0]

        t = time.perf_counter()
        ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)  # fmt: skip
        ray_start = time.perf_counter() - t
        runs: list[tuple[str, Path, bool, int]] = [
            ("local, 1 thread (baseline)", big, False, 1),
            ("Ray Data, 1 actor", big, True, 1),
            ("Ray Data, 2 actors", big, True, 2),
        ]
        rows = []
        model = ""
        base: tuple[float, float] | None = None
        try:
            for k, (name, archive, use_ray, workers) in enumerate(runs):
                rep, cpu = run(archive, root / f"out{k}", use_ray, workers)
                model = f"{rep.model['name']} {rep.model['version']}" + (
                    " (BirdNET v2.4 only)" if rep.model["birdnet_only"] else ""
                )
                per_cpu = rep.audio_hours * 3600 / cpu
                base = base or (rep.hours_per_hour, per_cpu)
                rows.append(
                    [
                        name,
                        rep.files_done + rep.files_partial,
                        round(rep.audio_hours, 2),
                        round(rep.wall_seconds, 1),
                        round(rep.hours_per_hour, 1),
                        f"{rep.hours_per_hour / base[0]:.2f}×",
                        round(cpu, 1),
                        round(per_cpu, 1),
                        f"{per_cpu / base[1]:.2f}×",
                        rep.totals["detections"],
                    ]
                )
                print(f"  {name}: {rep.wall_seconds:.1f} s, {cpu:.1f} CPU s", flush=True)
            over = []
            for use_ray, workers, label in ((False, 1, "local, 1 thread"), (True, 2, "Ray Data, 2 actors")):
                got = {}
                for kind, d in (("long", long_dir), ("tiny", tiny_dir)):
                    rep, cpu = run(d, root / f"over_{kind}_{use_ray}", use_ray, workers)
                    got[kind] = (rep.wall_seconds, cpu, rep.files_done)
                extra = got["tiny"][2] - got["long"][2]
                wall_ms = (got["tiny"][0] - got["long"][0]) / extra * 1000
                cpu_ms = (got["tiny"][1] - got["long"][1]) / extra * 1000
                over.append(
                    [
                        label,
                        f"{got['long'][2]} × 60 s",
                        round(got["long"][0], 1),
                        round(got["long"][1], 1),
                        f"{got['tiny'][2]} × 5 s",
                        round(got["tiny"][0], 1),
                        round(got["tiny"][1], 1),
                        round(wall_ms),
                        round(cpu_ms),
                    ]
                )
                print(f"  per-file overhead, {label}: {wall_ms:.0f} ms wall, {cpu_ms:.0f} ms CPU", flush=True)
        finally:
            ray.shutdown()

    print(
        f"\nmodel: {model}; machine: {os.cpu_count()} CPU cores, load average {load0:.1f} at the start and "
        f"{os.getloadavg()[0]:.1f} at the end (other work shares the cores); Ray local cluster start "
        f"{ray_start:.1f} s"
    )
    print(f"\nThroughput on {seconds / 3600:.2f} h of real recordings ({n_files} files):\n")
    print(
        table(
            [
                "run",
                "files",
                "audio h",
                "wall s",
                "audio h per h",
                "vs baseline",
                "CPU s",
                "audio h per CPU h",
                "vs baseline",
                "detections",
            ],  # fmt: skip
            rows,
        )
    )
    print("\nPer-file overhead (the same 10 min of real audio as few long or many tiny files):\n")
    print(
        table(
            [
                "run",
                "long files",
                "wall s",
                "CPU s",
                "tiny files",
                "wall s",
                "CPU s",
                "wall ms per extra file",
                "CPU ms per extra file",
            ],  # fmt: skip
            over,
        )
    )


if __name__ == "__main__":
    main()
