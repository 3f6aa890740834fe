"""The whole edge agent on 10 minutes of real audio, per backend, with BirdNET as the baseline of the
same run: capture replay (FileSource, as fast as possible) + streaming features + model + SQLite
store + clip sampling. Each backend runs in its own process so that its peak RSS is its own.

    .venv/bin/python benchmarks/edge_pipeline.py [--packages EXPORT_ROOT] [--minutes 10]

``--packages``: a root holding ``onnx-fp32/``, ``onnx-int8/``, ``tflite/`` edge packages (from
``silencio export edge`` / ``scripts/export_tflite.sh``); without it the default student
architecture is exported with untrained weights (speed and memory only). The audio is every real
recording under ``../shared/data`` concatenated (and repeated) to the requested length.
Real-time factor = processing seconds / audio seconds (lower is faster).
"""

from __future__ import annotations

import argparse
import json
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
sys.path.insert(0, {repo!r})
from pathlib import Path
from edge.agent import Agent
from edge.capture import FileSource
from edge.detector import load_scorer
from edge.settings import EdgeSettings
s = EdgeSettings(home=Path({home!r}), taxonomy=Path({tax!r}), threads=1)
scorer = load_scorer(Path({pkg!r}) if {pkg!r} else None, s.taxonomy_path, 1)
agent = Agent(s, scorer=scorer, seed=0)
agent.start_tour("bench")
t = time.perf_counter()
res = agent.run(FileSource(Path({audio!r}), chunk_seconds=0.5))
dt = time.perf_counter() - t
agent.end_tour()
print(json.dumps({{"seconds": res.seconds, "wall": dt, "windows": res.windows, "detections": res.detections,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "model": scorer.description}}))
"""


def long_audio(path: Path, minutes: float) -> float:
    import soundfile as sf

    from shared_features import load_audio

    parts, total = [], 0
    files = [p for p in sorted(DATA.rglob("*")) if p.suffix.lower() in (".ogg", ".wav", ".mp3", ".flac")]
    while total < minutes * 60 * 32_000:
        for p in files:
            try:
                x = load_audio(p)
            except Exception:  # noqa: BLE001 - skip what the decoder refuses
                continue
            parts.append(x)
            total += x.size
            if total >= minutes * 60 * 32_000:
                break
    x = np.concatenate(parts)[: int(minutes * 60 * 32_000)]
    sf.write(path, x, 32_000, subtype="PCM_16")
    return x.size / 32_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packages", type=Path)
    ap.add_argument("--minutes", type=float, default=10.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    audio = tmp / "long.wav"
    secs = long_audio(audio, args.minutes)
    root = args.packages
    if root is None:
        from benchmarks.edge_models import _default_packages
        from shared_features import frame_windows, load_audio

        w, _ = frame_windows(load_audio(audio)[: 60 * 32_000])
        root = _default_packages(tmp, w)
    runs = [("BirdNET v2.4 zero-shot (baseline)", "")]
    runs += [
        (f"student {f}", str(root / f)) for f in ("onnx-fp32", "onnx-int8", "tflite") if (root / f).exists()
    ]
    rows, base = [], None
    for name, pkg in runs:
        code = CHILD.format(
            repo=str(_HERE.parent),
            home=str(tmp / name.split()[0] / name.split()[-1]),
            tax=str(DATA / "birdclef2025_mini" / "taxonomy.csv"),
            pkg=pkg,
            audio=str(audio),
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rtf = r["wall"] / r["seconds"]
        base = base or rtf
        rows.append([name, r["seconds"] / 60, r["windows"], r["wall"], rtf, base / rtf, r["rss_mb"]])
    print(
        f"audio: {secs / 60:.1f} min of real recordings (../shared/data), stride 2.5 s, 1 thread; "
        f"student weights: {'trained (' + str(root) + ')' if args.packages else 'UNTRAINED (speed only)'}\n"
    )
    print(
        table(
            [
                "backend",
                "audio min",
                "windows",
                "wall s",
                "real-time factor",
                "× faster than BirdNET",
                "peak RSS MB",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
