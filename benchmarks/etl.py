"""ETL throughput: ``prepare_cache`` on the real mini dataset and on a synthetic dataset, with 1 and
2 worker processes.

    .venv/bin/python benchmarks/etl.py [--species 12 --clips 16]

Prints windows per second and audio seconds per second (decode + resample + window + log-mel +
float16 shard write), each from a fresh cache; the 1-worker run is the baseline of the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

# The script's folder holds training.py, which would shadow the `training` package: drop it from
# the path and import the project (and our table helper) from the repository root.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from benchmarks._table import table  # noqa: E402

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "birdclef2025_mini"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--species", type=int, default=12)
    ap.add_argument("--clips", type=int, default=16)
    args = ap.parse_args()

    from shared_features import audio_info
    from training.etl import FeatureCache, prepare_cache
    from training.synth import SynthConfig, generate

    tmp = Path(tempfile.mkdtemp(prefix="silencio_etl_bench_"))
    try:
        synth = tmp / "synth"
        generate(synth, SynthConfig(species=args.species, clips_per_species=args.clips, soundscapes=8))
        rows = []
        for name, root in (
            ("BirdCLEF mini (real, mixed formats/rates)", MINI),
            (f"synthetic ({args.species} species)", synth),
        ):
            files = sorted(p for p in (root / "train_audio").rglob("*") if p.is_file())
            files += sorted((root / "train_soundscapes").glob("*"))
            audio_s = sum(audio_info(p).duration for p in files)
            base = None
            for workers in (1, 2):
                out = tmp / f"cache_{workers}_{root.name}"
                t = time.perf_counter()
                m = prepare_cache(root, out, workers=workers)
                dt = time.perf_counter() - t
                assert len(FeatureCache(out)) == m["n_windows"]
                base = base or dt
                rows.append(
                    (
                        name,
                        workers,
                        len(files),
                        f"{audio_s:.0f}",
                        m["n_windows"],
                        dt,
                        m["n_windows"] / dt,
                        audio_s / dt,
                        base / dt,
                    )
                )
        print(
            table(
                [
                    "dataset",
                    "workers",
                    "files",
                    "audio s",
                    "windows",
                    "seconds",
                    "windows/s",
                    "audio s/s",
                    "speed-up vs 1 worker",
                ],
                rows,
            )
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
