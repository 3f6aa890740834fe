"""Feature-path speed on the real 60 s El Silencio soundscape.

    .venv/bin/python benchmarks/features.py [--repeat 5]

Prints, per path, the best time over the repeats, its real-time factor (processing seconds per
audio second; lower is faster) and the speed-up against librosa's melspectrogram measured in the
same run on the same audio (decode + resample included in both). numpy paths run with 1 BLAS
thread, torch with 1 intra-op thread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# The script's folder holds training.py, which would shadow the `training` package: drop it from
# the path and import the project (and our table helper) from the repository root.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from benchmarks._table import best_of, table  # noqa: E402

SOUNDSCAPE = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "birdclef2025_mini"
    / "train_soundscapes"
    / "H02_20230420_074000.ogg"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--file", type=Path, default=SOUNDSCAPE)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    from threadpoolctl import threadpool_limits

    import shared_features as sf
    from shared_features import DEFAULT, EDGE, StreamingLogMel, features_from_audio, load_audio

    threadpool_limits(1)
    dur = sf.audio_info(args.file).duration
    cfg = DEFAULT

    def decode() -> np.ndarray:
        return load_audio(args.file, cfg)

    def numpy_path() -> object:
        return features_from_audio(decode(), cfg)

    def streaming(stride_cfg=cfg) -> object:  # type: ignore[no-untyped-def]
        s = StreamingLogMel(stride_cfg)
        x = decode()
        out = []
        for i in range(0, x.size, 16_000):  # 0.5 s chunks, like a microphone callback
            out += s.push(x[i : i + 16_000])
        return out + s.flush()

    def librosa_path() -> object:
        import librosa

        x = decode()
        wins, _ = sf.frame_windows(x, cfg)
        return [
            librosa.power_to_db(
                librosa.feature.melspectrogram(
                    y=w,
                    sr=cfg.sample_rate,
                    n_fft=cfg.n_fft,
                    hop_length=cfg.hop_length,
                    n_mels=cfg.n_mels,
                    fmin=cfg.fmin,
                    fmax=cfg.fmax,
                    center=False,
                ),
                top_db=cfg.top_db,
            )
            for w in wins
        ]

    rows = []
    base = best_of(librosa_path, args.repeat)
    t_decode = best_of(decode, args.repeat)
    paths = [
        ("decode + resample only (soundfile + soxr)", t_decode),
        ("numpy log-mel, batch (shared_features)", best_of(numpy_path, args.repeat)),
        (
            "numpy log-mel, batch, stride 2.5 s (no frame sharing)",
            best_of(lambda: features_from_audio(decode(), EDGE), args.repeat),
        ),
        ("numpy streaming, stride 5 s, 0.5 s chunks", best_of(streaming, args.repeat)),
        ("numpy streaming, stride 2.5 s (edge), 0.5 s chunks", best_of(lambda: streaming(EDGE), args.repeat)),
    ]
    try:
        import torch

        from shared_features.mel_torch import TorchLogMel

        torch.set_num_threads(1)
        m = TorchLogMel(cfg)

        def torch_path() -> object:
            with torch.no_grad():
                return m(torch.from_numpy(sf.frame_windows(decode(), cfg)[0]))

        paths.append(("torch log-mel, CPU, batch", best_of(torch_path, args.repeat)))
    except ImportError:
        print("torch not installed: torch path skipped (pip install 'silencio[train]')")
    paths.append(("librosa.feature.melspectrogram (baseline)", base))
    for name, t in paths:
        rows.append((name, t * 1000, t / dur, dur / t, base / t))
    print(f"file: {args.file.name} ({dur:.1f} s), best of {args.repeat}, 1 thread\n")
    print(table(["path", "ms", "real-time factor", "× real time", "speed-up vs librosa"], rows))


if __name__ == "__main__":
    main()
