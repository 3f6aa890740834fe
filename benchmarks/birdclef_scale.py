"""BirdCLEF-scale rehearsal: the training pipeline on a synthetic dataset of real size and imbalance.

    nice -n 10 .venv/bin/python benchmarks/birdclef_scale.py --files 1000,5000 [--work /tmp/scale]

For each size in ``--files``: a synthetic dataset in the BirdCLEF 2025 layout with the **206 real
species** (the packaged taxonomy) and the **real class imbalance** — each species gets its share
of ``../shared/data/train_metadata_full.csv``'s 28,564 recordings scaled to the size (at least one
clip) — plus 60 s soundscapes (``--soundscape-ratio`` of the size; a few labelled, the rest
unlabelled for pseudo-labelling). The audio is synthetic (``training.synth``'s parametric calls over
noise): the figures are about time, memory and disk, never accuracy. Clips are short
(``--clip-seconds``, default 5–8 s) to keep the rehearsal within ~30–45 CPU minutes; every cost
that matters scales with 5 s windows, and the table gives it per window.

Then every stage runs as its own ``silencio`` command, as a user would run it:

    validate → prepare (feature cache) → one epoch of a member (from the cache) →
    ensemble (that member, weights fitted on validation) → distill (one round, one epoch, the
    teacher pseudo-labels the unlabelled soundscapes) → export (ONNX fp32 + int8)

The member is small (``--member``: ResNet-50's recipe with a ``resnet10t`` body on 4×-pooled
log-mel) and so is the student (``mobilenetv3_small_050``), so one epoch fits a 2-core CPU;
BirdNET is left out of the rehearsal's ensemble (its cost per window is in
``benchmarks/cloud_profile.py``). For each stage: wall time, CPU time, peak RSS of the stage's
whole process tree (sampled every 0.2 s), the disk it wrote, and the windows it processed. With
two sizes the script prints the growth of each figure between them — time and disk should grow
like the data, peak RSS should not (bounded memory) — and an extrapolation to the real 28,564
recordings.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from benchmarks._table import table  # noqa: E402

REPO = _HERE.parent
META = REPO.parent / "shared" / "data" / "train_metadata_full.csv"
REAL_FILES = 28_564  # BirdCLEF 2025 train_audio recordings (the metadata file lists 28,594 rows)
SR = 32_000


# ---------------------------------------------------------------------------------- the dataset
def real_counts() -> Counter[str]:
    with open(META, newline="") as fh:
        return Counter(r["primary_label"] for r in csv.DictReader(fh))


def scaled_counts(files: int, labels: list[str]) -> dict[str, int]:
    """Clips per species: the real share of each of the 206 species, scaled to ``files``, ≥ 1."""
    real = real_counts()
    total = sum(real.values())
    return {c: max(1, round(real.get(c, 0) * files / total)) for c in labels}


def _noise(n: int, rng: np.random.Generator, level: float) -> np.ndarray:
    """Pink-ish background noise, ``[n] float32``."""
    m = 1 << max(0, int(n - 1).bit_length())
    spec = np.fft.rfft(rng.standard_normal(m))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), m)[:n]
    return (level * x / (np.abs(x).max() + 1e-12)).astype(np.float32)


def _add(x: np.ndarray, call: np.ndarray, at: int, snr_db: float, noise_rms: float) -> tuple[int, int]:
    end = min(x.size, at + call.size)
    seg = call[: end - at]
    x[at:end] += seg * (noise_rms / (float(np.sqrt(np.mean(seg**2))) + 1e-9)) * 10 ** (snr_db / 20)
    return at, end


def _write(path: Path, x: np.ndarray) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    peak = float(np.abs(x).max())
    sf.write(path, x * (0.95 / peak) if peak > 0.95 else x, SR, format="OGG", subtype="VORBIS")


@dataclass(frozen=True)
class _Job:
    kind: str  # "clip" or "scape"
    path: str
    seed: int
    seconds: float
    species: tuple[int, ...]  # clip: (primary,); scape: present species


def _render(job: _Job, specs: list) -> list[tuple[int, float, float]]:  # type: ignore[type-arg]
    """Write one file; return its calls (species index, start s, end s)."""
    from training.synth import render_call

    rng = np.random.default_rng(job.seed)
    n = int(job.seconds * SR)
    x = _noise(n, rng, rng.uniform(0.005, 0.03))
    nrms = float(np.sqrt(np.mean(x**2)) + 1e-9)
    calls = []
    if job.kind == "clip":
        pos = 0
        while True:
            call = render_call(specs[job.species[0]], rng)
            pos += int(rng.uniform(0.2, 2.0) * SR)
            if pos + SR > n:
                break
            calls.append((job.species[0], *(v / SR for v in _add(x, call, pos, rng.uniform(0, 18), nrms))))
            pos += call.size
    else:
        for j in job.species:
            for _ in range(int(rng.integers(1, 5))):
                call = render_call(specs[j], rng)
                at = int(rng.uniform(0, max(1, n - call.size)))
                calls.append((j, *(v / SR for v in _add(x, call, at, rng.uniform(0, 15), nrms))))
    _write(Path(job.path), x)
    return calls


_SPECS: list = []  # type: ignore[type-arg]


def _init(specs: list) -> None:  # type: ignore[type-arg]
    _SPECS[:] = specs


def _render_job(job: _Job) -> list[tuple[int, float, float]]:
    return _render(job, _SPECS)


def synthesize(
    out: Path,
    files: int,
    scapes: int,
    labelled: int,
    clip_seconds: tuple[float, float],
    seed: int,
    workers: int,
) -> dict[str, object]:
    """The dataset (taxonomy.csv, train.csv, train_audio/, train_soundscapes/,
    soundscape_solution.csv for the ``labelled`` first soundscapes)."""
    from shared_features import LabelSpace
    from shared_features.labels import taxonomy_path
    from training.synth import make_species

    labels = LabelSpace.default()
    rng = np.random.default_rng(seed)
    pool = make_species(len(labels), rng)  # parametric calls, grouped by taxon class below
    by_class: dict[str, list] = {}  # type: ignore[type-arg]
    for s in pool:
        by_class.setdefault(s.taxon_class, []).append(s)
    specs = []
    for i, sp in enumerate(labels):
        base = by_class.get(sp.taxon_class) or pool
        s = base[i % len(base)]
        shift = rng.uniform(0.85, 1.15)  # species sharing a call type differ in pitch
        specs.append(
            replace(
                s,
                code=sp.code,
                scientific_name=sp.scientific_name,
                common_name=sp.common_name,
                taxon_class=sp.taxon_class,
                f_lo=s.f_lo * shift,
                f_hi=min(15_000.0, s.f_hi * shift),
            )
        )
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(taxonomy_path(None), out / "taxonomy.csv")
    counts = scaled_counts(files, list(labels.codes))
    jobs: list[_Job] = []
    rows = []
    catalogue = 10_000
    weights = np.array([counts[c] for c in labels.codes], np.float64)
    for k, code in enumerate(labels.codes):
        for _ in range(counts[code]):
            catalogue += int(rng.integers(1, 50))
            coll = ("XC", "iNat", "CSA")[int(rng.choice(3, p=[0.7, 0.25, 0.05]))]
            fname = f"{code}/{coll}{catalogue}.ogg"
            sec = float(rng.uniform(*clip_seconds))
            jobs.append(_Job("clip", str(out / "train_audio" / fname), int(rng.integers(1 << 31)), sec, (k,)))
            rows.append(
                {
                    "primary_label": code,
                    "secondary_labels": "[]",
                    "type": "['call']",
                    "filename": fname,
                    "collection": coll,
                    "rating": "4.0",
                    "url": f"synthetic://{fname}",
                    "latitude": "6.8",
                    "longitude": "-74.0",
                    "scientific_name": labels[k].scientific_name,
                    "common_name": labels[k].common_name,
                    "author": "silencio birdclef_scale",
                    "license": "CC0 (synthetic)",
                }
            )
    scape_names = []
    for j in range(scapes):
        name = f"SCALE{j:05d}_20250101_{6 + j % 12:02d}0000"
        present = rng.choice(
            len(labels), size=int(rng.integers(2, 5)), replace=False, p=weights / weights.sum()
        )
        jobs.append(
            _Job(
                "scape",
                str(out / "train_soundscapes" / f"{name}.ogg"),
                int(rng.integers(1 << 31)),
                60.0,
                tuple(int(p) for p in present),
            )
        )
        scape_names.append(name)
    with open(out / "train.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with ProcessPoolExecutor(workers, initializer=_init, initargs=(specs,)) as ex:
        results = list(ex.map(_render_job, jobs, chunksize=16))
    truth = results[len(rows) : len(rows) + labelled]
    with open(out / "soundscape_solution.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row_id", *labels.codes])
        for name, calls in zip(scape_names[:labelled], truth):
            for wi in range(12):
                lo, hi = wi * 5.0, wi * 5.0 + 5.0
                y = np.zeros(len(labels), np.int8)
                for k, a, b in calls:
                    if min(b, hi) - max(a, lo) >= 0.5:
                        y[k] = 1
                w.writerow([f"{name}_{int(hi)}", *y.tolist()])
    (out / "SYNTHETIC.md").write_text(
        "# Synthetic BirdCLEF-scale rehearsal dataset\n\nWritten by `benchmarks/birdclef_scale.py`: the "
        "206 real species and their real class imbalance, **synthetic audio**. For time, memory and "
        "disk figures only.\n"
    )
    seconds = sum(j.seconds for j in jobs)
    return {
        "clips": len(rows),
        "soundscapes": scapes,
        "labelled_soundscapes": labelled,
        "audio_hours": seconds / 3600,
    }


# ---------------------------------------------------------------------------------- the stages
@dataclass
class StageResult:
    name: str
    wall: float
    cpu: float
    peak_rss_mb: float
    disk_mb: float
    windows: int
    note: str = ""  # "" when the stage succeeded, else why it failed
    peak_anon_mb: float = float("nan")  # peak RSS less file-backed pages (mapped caches)


def _tree_memory(pid: int) -> tuple[float, float]:
    """(RSS, RSS less file-backed and shared pages) of ``pid`` and its descendants, MB. The second
    is the memory the processes hold themselves: a memory-mapped feature cache's pages count in
    RSS once read, but they are the page cache's, reclaimable."""
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    rss = anon = 0
    for q in procs:
        try:
            m = q.memory_info()
        except psutil.NoSuchProcess:
            continue
        rss += m.rss
        anon += m.rss - getattr(m, "shared", 0)
    return rss / 1e6, anon / 1e6


def run_stage(
    name: str, cmd: list[str], env: dict[str, str], log: Path, outputs: list[Path], src: Path
) -> StageResult:
    """Run ``cmd`` in ``src``; wall, CPU (user+sys of it and its children), peak RSS of its process
    tree; a failure is recorded (exit status, killed by which signal), not raised."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=src, env=env, stdout=fh, stderr=subprocess.STDOUT)
        peak = peak_anon = 0.0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak, peak_anon
            while not stop.is_set():
                rss, anon = _tree_memory(proc.pid)
                peak, peak_anon = max(peak, rss), max(peak_anon, anon)
                stop.wait(0.2)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        th.join()
    wall = time.perf_counter() - t0
    note = ""
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        note = f"FAILED: killed by {sig}" + (" (out of memory?)" if sig == "SIGKILL" else "")
    elif proc.returncode > 0:
        note = f"FAILED: exit status {proc.returncode}"
    if note:
        print(f"    {note}; see {log}", flush=True)
    disk = sum(_du(p) for p in outputs) / 1e6
    return StageResult(name, wall, ru.ru_utime + ru.ru_stime, peak, disk, 0, note, peak_anon)


def _du(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0


def rehearse(files: int, args: argparse.Namespace) -> tuple[dict[str, object], list[StageResult]]:
    work = Path(args.work) / f"files{files}"
    data, cache, home = work / "data", work / "cache", work / "home"
    src = Path(args.src).resolve() if args.src else REPO
    env = {
        **os.environ,
        "SILENCIO_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    if args.reuse and (work / "dataset.json").exists():  # the dataset (and outputs) of a --keep run
        info = json.loads((work / "dataset.json").read_text())
    else:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        scapes = max(2, round(files * args.soundscape_ratio))
        labelled = max(1, min(args.labelled, scapes // 2))
        t0 = time.perf_counter()
        info = synthesize(data, files, scapes, labelled, args.clip_seconds, args.seed, args.workers)
        info["synth_seconds"] = time.perf_counter() - t0
        info["data_mb"] = _du(data) / 1e6
        (work / "dataset.json").write_text(json.dumps(info))
    py = [sys.executable, "-m", "silencio"]
    member = args.member
    stages = [
        (
            "validate",
            [
                *py,
                "data",
                "validate",
                str(data),
                "--out",
                str(work / "validation"),
                "--workers",
                str(args.workers),
            ],
            [work / "validation"],
        ),
        (
            "prepare (feature cache)",
            [*py, "data", "prepare", str(data), "--out", str(cache), "--workers", str(args.workers)],
            [cache],
        ),
        (
            f"1 epoch {member[0]} ({member[1]}, from the cache)",
            [
                *py,
                "train",
                "fit",
                member[0],
                "--cache",
                str(cache),
                "--timm-name",
                member[1],
                "--downsample",
                member[2],
                "--epochs",
                "1",
                "--batch-size",
                "32",
                "--no-mlflow",
                "--device",
                "cpu",
                "--out",
                str(work / "member"),
            ],
            [work / "member"],
        ),
        (
            "ensemble (weights on validation)",
            [
                *py,
                "train",
                "ensemble",
                "--data",
                str(data),
                "--member",
                str(work / "member" / "model.pt"),
                "--no-birdnet",
                "--no-mlflow",
                "--out",
                str(work / "ensemble"),
            ],
            [work / "ensemble"],
        ),
        (
            "distill (1 round, 1 epoch)",
            [
                *py,
                "train",
                "distill",
                "--data",
                str(data),
                "--teacher",
                str(work / "ensemble"),
                "--timm-name",
                "mobilenetv3_small_050",
                "--downsample",
                "2",
                "--epochs",
                "1",
                "--rounds",
                "1",
                "--no-mlflow",
                "--device",
                "cpu",
                "--out",
                str(work / "student"),
            ],
            [work / "student"],
        ),
        (
            "export (ONNX fp32 + int8)",
            [
                *py,
                "export",
                "edge",
                str(work / "student" / "round1" / "model.pt"),
                "--data",
                str(data),
                "--out",
                str(work / "edge"),
                "--min-agreement",
                "0",
                "--max-auc-drop",
                "1",
                "--no-mlflow",
            ],
            [work / "edge"],
        ),
    ]
    # results of earlier runs on this dataset (--reuse), replaced stage by stage by this run's
    store = work / f"results{'-' + args.tag if args.tag else ''}.json"
    saved = {d["name"]: StageResult(**d) for d in json.loads(store.read_text())} if store.exists() else {}
    for name, cmd, outs in stages:
        if args.stages and not any(name.startswith(s) for s in args.stages.split(",")):
            continue
        print(f"  [{files} files] {name} …", flush=True)
        for o in outs:  # a stage's outputs are its own: rerunning it starts afresh
            shutil.rmtree(o, ignore_errors=True)
        slug = "".join(c if c.isalnum() else "_" for c in name.split("(")[0].strip())
        r = run_stage(name, cmd, env, work / f"{slug}{'-' + args.tag if args.tag else ''}.log", outs, src)
        saved[name] = r
        store.write_text(json.dumps([asdict(x) for x in saved.values()], indent=2))
        if r.note:
            break  # the next stages need this one's output
    order = [n for n, _, _ in stages]
    results = sorted(saved.values(), key=lambda r: order.index(r.name) if r.name in order else len(order))
    man = json.loads((cache / "manifest.json").read_text()) if (cache / "manifest.json").exists() else {}
    info["windows"] = int(man.get("n_windows", 0))
    if not args.keep:
        shutil.rmtree(work)
    return info, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--files", default="1000,5000", help="dataset sizes (training recordings), comma-separated"
    )
    ap.add_argument("--soundscape-ratio", type=float, default=0.1, help="60 s soundscapes per recording")
    ap.add_argument("--labelled", type=int, default=20, help="soundscapes with published truth")
    ap.add_argument(
        "--clip-seconds", type=lambda s: tuple(float(x) for x in s.split(",")), default=(5.0, 8.0)
    )
    ap.add_argument(
        "--member",
        type=lambda s: s.split(","),
        default=["resnet50", "resnet10t", "4"],
        help="member,timm body,downsample",
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stages", help="only the stages starting with these names (comma-separated)")
    ap.add_argument("--work", default="/tmp/silencio_scale")
    ap.add_argument("--keep", action="store_true", help="keep the datasets and outputs")
    ap.add_argument("--reuse", action="store_true", help="reuse the datasets (and outputs) of a --keep run")
    ap.add_argument("--src", help="run the stages from this source tree (another commit's code, say)")
    ap.add_argument("--tag", default="", help="keep this run's results apart (results-TAG.json)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sizes = [int(x) for x in args.files.split(",")]
    runs = []
    for n in sizes:
        print(f"rehearsal at {n} recordings …", flush=True)
        runs.append((n, *rehearse(n, args)))
    lo, hi = args.clip_seconds
    for n, info, res in runs:
        print(
            f"\n{n} recordings ({info['clips']} clips of {lo:g}–{hi:g} s, "
            f"{info['soundscapes']} soundscapes of 60 s, {info['labelled_soundscapes']} labelled; "
            f"{info['audio_hours']:.1f} h of audio, {info['windows']} windows, {info['data_mb']:.0f} MB OGG; "
            f"synthesised in {info['synth_seconds']:.0f} s)\n"
        )
        w = max(1, int(info["windows"]))
        print(
            table(
                [
                    "stage",
                    "wall s",
                    "CPU s",
                    "peak RSS MB",
                    "… less mapped files",
                    "disk MB",
                    "CPU ms / window",
                    "status",
                ],
                [
                    [
                        r.name,
                        r.wall,
                        r.cpu,
                        r.peak_rss_mb,
                        r.peak_anon_mb,
                        r.disk_mb,
                        1e3 * r.cpu / w,
                        r.note or "ok",
                    ]
                    for r in res
                ],
            )
        )
    if len(runs) >= 2:
        (n0, i0, r0), (n1, i1, r1) = runs[0], runs[-1]
        wr = int(i1["windows"]) / max(1, int(i0["windows"]))
        print(
            f"\ngrowth from {n0} to {n1} recordings (windows × {wr:.2f}) and a linear extrapolation "
            f"(fixed cost + cost per recording, through the two sizes) to {REAL_FILES:,} recordings of "
            f"the same length:\n"
        )

        def at_real(a: float, b: float) -> float:
            per = (b - a) / (n1 - n0)
            return max(b, a + per * (REAL_FILES - n0))

        rows: list[list[object]] = []
        big = {r.name: r for r in r1}
        for a in r0:
            b = big.get(a.name)
            if b is None or a.note or b.note:
                rows.append([a.name, *["—"] * 9, (a.note or (b.note if b else "not run")) or ""])
                continue
            rows.append(
                [
                    a.name,
                    b.wall / a.wall,
                    b.cpu / max(1e-9, a.cpu),
                    b.peak_rss_mb / max(1e-9, a.peak_rss_mb),
                    b.peak_anon_mb / max(1e-9, a.peak_anon_mb),
                    b.disk_mb / max(1e-9, a.disk_mb),
                    at_real(a.cpu, b.cpu) / 60,
                    at_real(a.wall, b.wall) / 60,
                    at_real(a.peak_rss_mb, b.peak_rss_mb),
                    b.disk_mb * REAL_FILES / n1 / 1e3,
                    "",
                ]
            )
        print(
            table(
                [
                    "stage",
                    "wall ×",
                    "CPU ×",
                    "peak RSS ×",
                    "… less mapped ×",
                    "disk ×",
                    "CPU min",
                    "wall min (2 CPUs)",
                    "peak RSS MB (linear)",
                    "disk GB",
                    "",
                ],
                rows,
            )
        )
        print(
            "\n(CPU and wall minutes, peak RSS and disk at the real size. Wall time on a shared 2-core "
            "machine depends on its load; CPU time does not. A peak RSS that grows with the data "
            "(× well above 1) means a stage holds data in memory; the linear extrapolation is an upper "
            "bound for stages whose growth is a bounded cache — training from audio keeps up to 2 GB "
            "of decoded recordings, training.data.AudioWindows.)"
        )


if __name__ == "__main__":
    main()
