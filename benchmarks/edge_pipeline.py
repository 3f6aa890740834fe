"""The whole edge agent on minutes of real audio, per backend, with BirdNET as the baseline of the
same run: capture replay (FileSource, as fast as possible) + streaming features + model + SQLite
store + clip sampling (speech gate, OGG encoding, durable writes — on the sampler's worker thread).

    .venv/bin/python benchmarks/edge_pipeline.py [--packages EXPORT_ROOT] [--minutes 10] [--rounds 2]
                                                 [--profile DIR] [--clip-policy product,same]

``--packages``: a root holding ``onnx-fp32/``, ``onnx-int8/``, ``tflite/`` edge packages (from
``silencio export edge`` / ``scripts/export_tflite.sh``); without it the default student
architecture is exported with untrained weights (speed and memory only), in a process of its own.
The audio is every real recording under ``../shared/data`` concatenated (and repeated) to the
requested length.

Every backend runs in a fresh process of its own (``python -c``; nothing of the parent — no torch —
is in it), with one thread for the model and for numpy's BLAS, and without the modules the ``edge``
extra does not install (pandas, pyarrow, torch, …: sqlite-utils would import pandas if it could;
``--dev-venv`` allows them). Peak RSS is the child's ``VmHWM``
(``ru_maxrss`` would report the parent's size at the fork). Wall time is what a user waits; CPU time
(user + system, all threads: the clip worker included) is what a single-core device would spend,
and the figure that survives a busy machine. ``--rounds``: each backend runs that many times,
alternating, and the best round is kept. Real-time factor = seconds spent / seconds of audio (lower
is faster); "× real time" is its inverse. The model is loaded (and run once) before the clock
starts, for every backend alike. ``--profile DIR``: each backend's run under cProfile timed by the
agent thread's CPU clock (the clip worker's CPU is in the CPU column, not in the table), its top
functions written to ``DIR/<backend>.txt`` (cumulative time). ``--clip-policy`` (see
:data:`CLIP_POLICIES`): ``product`` runs the device's defaults, whose clips depend on the model's
scores; ``same`` makes every backend keep clips at the same windows, so that its ratio to BirdNET is
the pipeline's own cost; both in one run with ``product,same``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from benchmarks._table import table  # noqa: E402

DATA = _HERE.parents[1] / "shared" / "data"

CHILD = r"""
import json, resource, sys, time
for _m in {blocked!r}:
    sys.modules[_m] = None  # not in the edge extra: as on a device that installed only silencio[edge]
sys.path.insert(0, {repo!r})
from pathlib import Path
from edge.agent import Agent
from edge.capture import FileSource
from edge.detector import load_scorer
from edge.settings import EdgeSettings

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

def hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

s = EdgeSettings(home=Path({home!r}), taxonomy=Path({tax!r}), threads=1, **{settings!r})
scorer = load_scorer(Path({pkg!r}) if {pkg!r} else None, s.taxonomy_path, 1)
agent = Agent(s, scorer=scorer, seed=0)
import numpy as np
cfg = agent.detector.cfg
scorer.score(np.zeros(cfg.window_samples, np.float32), np.zeros((cfg.n_mels, cfg.n_frames), np.float32))
agent.start_tour("bench")
prof = None
if {profile!r}:
    import cProfile
    prof = cProfile.Profile(time.thread_time)  # CPU time of the agent's thread, not the machine's load
    prof.enable()
t, c, m = time.perf_counter(), cpu(), time.thread_time()
res = agent.run(FileSource(Path({audio!r}), chunk_seconds=0.5))
dt, dc, dm = time.perf_counter() - t, cpu() - c, time.thread_time() - m
if prof is not None:
    import io, pstats
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(40)
    Path({profile!r}).write_text(buf.getvalue())
    prof.dump_stats(str(Path({profile!r}).with_suffix(".prof")))
agent.end_tour()
st = agent.sampler.stats
print(json.dumps({{"seconds": res.seconds, "wall": dt, "cpu": dc, "main_cpu": dm, "windows": res.windows,
                  "detections": res.detections, "clips": st.random + st.uncertain,
                  "speech": st.speech_suppressed, "rss_mb": hwm_mb(), "model": scorer.description}}))
"""

EXPORT = r"""
import sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from benchmarks.edge_models import _default_packages
from shared_features import frame_windows, load_audio
w, _ = frame_windows(load_audio(Path({audio!r}))[: 60 * 32_000])
print(_default_packages(Path({root!r}), w))
"""


def long_audio(path: Path, minutes: float) -> float:
    import soundfile as sf

    from shared_features import load_audio

    parts, total = [], 0
    files = [p for p in sorted(DATA.rglob("*")) if p.suffix.lower() in (".ogg", ".wav", ".mp3", ".flac")]
    if not files:
        raise SystemExit(f"no recordings under {DATA} (the shared data folder beside the repository)")
    while total < minutes * 60 * 32_000:
        before = total
        for p in files:
            try:
                x = load_audio(p)
            except Exception:  # noqa: BLE001 - skip what the decoder refuses
                continue
            if not x.size:
                continue
            parts.append(x)
            total += x.size
            if total >= minutes * 60 * 32_000:
                break
        if total == before:
            raise SystemExit(f"none of the {len(files)} recordings under {DATA} decodes")
    x = np.concatenate(parts)[: int(minutes * 60 * 32_000)]
    sf.write(path, x, 32_000, subtype="PCM_16")
    return x.size / 32_000


#: importable in a development environment but not installed by the ``edge`` extra; sqlite-utils
#: imports pandas (and pandas pyarrow) whenever it can, ~105 MB of RSS a device does not have
NOT_ON_DEVICE = ("pandas", "pyarrow", "torch", "mlflow", "ray")


#: ``--clip-policy``: the edge settings of each policy. ``product``: the defaults a device runs
#: (detection starts at 50 %, uncertain windows paced per species, 5 % at random: how many clips
#: depends on the model's scores). ``same``: every backend keeps its clips at the same windows — 5 %
#: of them at random, from the same seeded draw (one draw per window, whatever the scores), no
#: uncertain clips — so the backends differ only in what the pipeline itself costs.
CLIP_POLICIES: dict[str, dict[str, object]] = {
    "product": {},
    "same": {"random_clip_rate": 0.05, "detection_clip_rate": 0.05, "uncertain_clips": False},
}


def run_backend(
    pkg: str,
    home: Path,
    audio: Path,
    profile: Path | None = None,
    dev_venv: bool = False,
    policy: str = "product",
) -> dict[str, object]:
    """One agent run in a fresh process; its figures as a dict."""
    code = CHILD.format(
        settings=CLIP_POLICIES[policy],
        blocked=() if dev_venv else NOT_ON_DEVICE,
        repo=str(_HERE.parent),
        home=str(home),
        tax=str(DATA / "birdclef2025_mini" / "taxonomy.csv"),
        pkg=pkg,
        audio=str(audio),
        profile=str(profile) if profile else "",
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"backend {pkg or 'BirdNET'} failed:\n{out.stderr[-3000:]}")
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


#: the stages of the agent's thread, as (label, file suffix, function or ``*`` for the whole module);
#: time not under any of them (the loop itself, queueing, Python glue) is "the rest"
STAGES = (
    ("decode + resample (soundfile, soxr)", "shared_features/audio.py", "iter_audio_chunks"),
    ("level meter", "edge/capture.py", "update_level"),
    ("streaming log-mel", "shared_features/streaming.py", "push"),
    ("model", "edge/detector.py", "_score"),
    ("events (merge windows)", "edge/detector.py", "events"),
    ("store (SQLite) for detections", "edge/store.py", "*"),
    (
        "clips on this thread (choice; speech gate, encoding, write where not on the worker)",
        "edge/sampler.py",
        "*",
    ),
    ("speech gate called directly", "edge/speech.py", "*"),
)


def _in_stage(key: tuple[str, int, str], suffix: str, func: str) -> bool:
    return key[0].endswith(suffix) and (func == "*" or key[2] == func)


def breakdown(prof: Path, windows: int) -> list[tuple[str, float]]:
    """CPU ms per window of each of :data:`STAGES` in a saved agent-thread profile, the rest, and the
    whole run. A stage's time is the cumulative time of its functions over the calls that do not come
    from inside a stage (a stage's nested calls count once: the speech gate or the store under the
    sampler count as the sampler's)."""
    import pstats

    raw = pstats.Stats(str(prof)).stats  # type: ignore[attr-defined]
    total = max(ct for (f, _, name), (_, _, _, ct, _) in raw.items() if name == "run" and "edge/agent" in f)
    rows: list[tuple[str, float]] = []
    for label, suffix, func in STAGES:
        t = 0.0
        for key, (_, _, _, _, callers) in raw.items():
            if _in_stage(key, suffix, func):
                t += sum(
                    c[3] for ck, c in callers.items() if not any(_in_stage(ck, s, fn) for _, s, fn in STAGES)
                )
        rows.append((label, 1e3 * t / windows))
    rows.append(("the rest (agent loop, Python glue)", 1e3 * total / windows - sum(t for _, t in rows)))
    rows.append(("agent thread, total", 1e3 * total / windows))
    return rows


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="edge-pipeline-"))
    try:
        _main(tmp)
    finally:  # the long WAV and every backend's home (clips, databases) are this run's only
        shutil.rmtree(tmp, ignore_errors=True)


def _main(tmp: Path) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packages", type=Path)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=1, help="runs per backend, alternating; best kept")
    ap.add_argument("--profile", type=Path, help="write each backend's cProfile table here")
    ap.add_argument(
        "--clip-policy",
        default="product",
        help="comma-separated: product (the device's defaults: clips depend on the model's scores), "
        "same (every backend keeps clips at the same 5 %% of windows: the pipeline's own cost)",
    )
    ap.add_argument(
        "--dev-venv",
        action="store_true",
        help="let the child import pandas/pyarrow if installed (the edge extra installs neither)",
    )
    args = ap.parse_args()
    audio = tmp / "long.wav"
    secs = long_audio(audio, args.minutes)
    root = args.packages
    if root is None:  # exported in a process of its own: its torch stays out of this one
        code = EXPORT.format(repo=str(_HERE.parent), audio=str(audio), root=str(tmp / "untrained"))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        root = Path(out.stdout.strip().splitlines()[-1])
    runs = [("BirdNET v2.4 zero-shot (baseline)", "")]
    runs += [
        (f"student {f}", str(root / f)) for f in ("onnx-fp32", "onnx-int8", "tflite") if (root / f).exists()
    ]
    policies = [p.strip() for p in args.clip_policy.split(",") if p.strip()]
    unknown = sorted(set(policies) - set(CLIP_POLICIES))
    if unknown or not policies:
        ap.error(f"--clip-policy: unknown {unknown}; known: {sorted(CLIP_POLICIES)}")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    best: dict[tuple[str, str], dict[str, object]] = {}
    for k in range(args.rounds):
        for policy in policies:
            for name, pkg in runs:
                slug = name.split()[0] if not pkg else Path(pkg).name
                prof = (
                    args.profile / f"{slug}.txt"
                    if args.profile and k == 0 and policy == policies[0]
                    else None
                )
                r = run_backend(pkg, tmp / f"home-{slug}-{policy}-{k}", audio, prof, args.dev_venv, policy)
                key = (policy, name)
                if key not in best or float(r["cpu"]) < float(best[key]["cpu"]):  # type: ignore[arg-type]
                    best[key] = r
    rows = []
    for policy in policies:
        base = best[(policy, runs[0][0])]
        for name, _ in runs:
            r = best[(policy, name)]
            sec, wall, cpu, main_cpu = (float(r[k]) for k in ("seconds", "wall", "cpu", "main_cpu"))  # type: ignore[arg-type]
            win, clips = int(r["windows"]), int(r["clips"]) + int(r["speech"])  # type: ignore[call-overload]
            rows.append(
                [
                    name,
                    policy,
                    win,
                    r["detections"],
                    f"{r['clips']} (+{r['speech']} speech)",
                    wall,
                    cpu,
                    1e3 * main_cpu / win,
                    1e3 * (cpu - main_cpu) / clips if clips else "",
                    sec / cpu,
                    float(base["cpu"]) / cpu,  # type: ignore[arg-type]
                    float(base["wall"]) / wall,  # type: ignore[arg-type]
                    float(r["rss_mb"]),  # type: ignore[arg-type]
                ]
            )
    print(
        f"audio: {secs / 60:.1f} min of real recordings (../shared/data), stride 2.5 s, 1 thread, "
        f"best of {args.rounds} round(s); "
        f"{'development venv (pandas importable)' if args.dev_venv else 'edge-extra modules only'}; "
        "student weights: "
        f"{'trained (' + str(root) + ')' if args.packages else 'UNTRAINED (speed only)'}\n"
    )
    print(
        table(
            [
                "backend",
                "clip policy",
                "windows",
                "detections",
                "clips kept",
                "wall s",
                "CPU s",
                "detection path CPU ms / window",
                "clip worker CPU ms / clip",
                "× real time (CPU)",
                "× faster than BirdNET (CPU)",
                "× faster (wall)",
                "peak RSS MB",
            ],
            rows,
        )
    )
    print(
        "\nCPU s: the whole process (agent thread + clip worker). Detection path: the agent's thread "
        "(decode, features, model, store, display callbacks). Clip worker: speech gate + OGG encoding + "
        "durable write + row, per clip it handled (kept or suppressed as speech). The clips kept follow "
        "the sampler's policy (random, detection starts, uncertain windows), so they depend on the "
        "model's scores. The baseline is BirdNET inside this agent: three 3 s chunks per 5 s window "
        "every 2.5 s (3.6x the chunks of BirdNET's own analyzer; benchmarks/edge_models.py has that). "
        "Clip policy: product = the device's defaults (the clips kept depend on the model's scores); "
        "same = every backend keeps its clips at the same 5 % of windows (one seeded draw per window, "
        "no uncertain clips), so its ratio is the pipeline's own cost. Ratios are against BirdNET "
        "under the same policy."
    )
    if args.profile:
        names = [n for n, _ in runs]
        slugs = ["BirdNET" if not pkg else Path(pkg).name for _, pkg in runs]
        parts = {
            n: dict(breakdown(args.profile / f"{s}.prof", int(best[(policies[0], n)]["windows"])))
            for n, s in zip(names, slugs)
        }  # type: ignore[call-overload]
        stages = list(next(iter(parts.values())))
        print(
            "\nWhere the agent thread's CPU goes, ms per 5 s window (cProfile on the thread's CPU clock, "
            "first round; profiling adds its own overhead to Python-heavy stages):\n"
        )
        print(table(["stage", *names], [[st, *(parts[n][st] for n in names)] for st in stages]))
    try:
        import os

        print(f"\nload average during the run (1, 5, 15 min): {os.getloadavg()}")
    except OSError:
        pass


if __name__ == "__main__":
    main()
