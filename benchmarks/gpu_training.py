"""GPU training throughput: the real input pipeline and the step rate (run by gpu_training.sh).

Measures, for EfficientNet-B0 (bf16 autocast, channels-last) at batch ``--batch``:

1. ``compute``: training steps on a batch already on the GPU (the ceiling);
2. ``cache``: the ETL feature cache (float16 memmaps) through a DataLoader with workers and
   pinned memory → GPU → training step;
3. ``audio``: decoded 5 s waveforms (float32, or int16 PCM — half the bytes — converted on the
   GPU) → GPU → the shared torch log-mel on the GPU → training step;
4. the two loaders alone (no model), to show where the time goes.

Prints clips/s and the ratio of each to the compute ceiling.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# The script's folder holds training.py, which would shadow the `training` package: drop it from
# the path and import the project (and our table helper) from the repository root.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from benchmarks._table import table  # noqa: E402


class GatheredBatches:
    """Random batches gathered from in-RAM tensors with one ``index_select`` (no per-item Python,
    no collate). ``reuse``: into two pre-allocated pinned buffers, copied to the device
    asynchronously, each buffer reused only after its copy finished (CUDA events); otherwise a new
    pinned tensor per batch."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch: int, pin: bool, dev: torch.device, reuse: bool = False
    ) -> None:
        self.x, self.y, self.batch, self.pin, self.dev, self.reuse = x, y, batch, pin, dev, reuse
        if reuse:
            self.bufs = [
                (
                    torch.empty((batch, *x.shape[1:]), dtype=x.dtype).pin_memory(),
                    torch.empty((batch, *y.shape[1:]), dtype=y.dtype).pin_memory(),
                )
                for _ in range(2)
            ]
            self.events: list[torch.cuda.Event | None] = [None, None]

    def __iter__(self):  # type: ignore[no-untyped-def]
        perm = torch.randperm(len(self.x))
        for k, i in enumerate(range(0, len(perm) - self.batch + 1, self.batch)):
            idx = perm[i : i + self.batch]
            if not self.reuse:
                xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)
                yield (xb.pin_memory(), yb.pin_memory()) if self.pin else (xb, yb)
                continue
            j = k % 2
            ev = self.events[j]
            if ev is not None:
                ev.synchronize()  # the previous copy out of this buffer is done
            xb, yb = self.bufs[j]
            torch.index_select(self.x, 0, idx, out=xb)
            torch.index_select(self.y, 0, idx, out=yb)
            xd, yd = xb.to(self.dev, non_blocking=True), yb.to(self.dev, non_blocking=True)
            self.events[j] = torch.cuda.Event()
            self.events[j].record()
            yield xd, yd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--species", type=int, default=24)
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--timm-name", default="efficientnet_b0")
    args = ap.parse_args()

    from torch.utils.data import DataLoader, TensorDataset

    from shared_features import DEFAULT, frame_windows, load_audio
    from training.data import CachedWindows
    from training.dataset import BirdCLEFDataset
    from training.etl import FeatureCache, prepare_cache
    from training.models import build_model, member_config
    from training.synth import SynthConfig, generate

    dev = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    tmp = Path(tempfile.mkdtemp(prefix="silencio_gpu_"))
    t = time.perf_counter()
    generate(tmp / "ds", SynthConfig(species=args.species, clips_per_species=args.clips, soundscapes=2))
    m = prepare_cache(tmp / "ds", tmp / "cache", workers=args.workers)
    print(f"synthetic data + cache: {m['n_windows']} windows in {time.perf_counter() - t:.1f} s", flush=True)
    cache = FeatureCache(tmp / "cache")
    rows = cache.rows("train")
    n_cls = len(cache.labels)
    model = build_model(member_config("efficientnet_b0", timm_name=args.timm_name), n_cls).to(dev)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(**amp):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def run(batches, train: bool, n: int) -> float:  # type: ignore[no-untyped-def]
        it = iter(batches)
        done, t0 = 0, None
        for i in range(n + 3):
            try:
                x, y = next(it)
            except StopIteration:
                it = iter(batches)
                x, y = next(it)
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if train:
                step(x, y)
            if i == 2:  # after warm-up
                sync()
                t0 = time.perf_counter()
            elif i > 2:
                done += x.shape[0]
        sync()
        return done / (time.perf_counter() - t0)

    model.train()
    x = torch.randn(args.batch, 128, 316, device=dev)
    y = torch.rand(args.batch, n_cls, device=dev)
    compute = run([(x, y)], True, args.steps)
    cached = CachedWindows(cache, rows, cache.labels)
    cache_loader = DataLoader(
        cached,
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=True,
        drop_last=True,
    )
    ds = BirdCLEFDataset.load(tmp / "ds")
    wav = np.concatenate([frame_windows(load_audio(ds.audio_path(r)), DEFAULT)[0] for r in ds.recordings])
    targets = torch.rand(len(wav), n_cls)
    audio_loader = DataLoader(
        TensorDataset(torch.from_numpy(wav), targets),
        batch_size=args.batch,
        shuffle=True,
        num_workers=2,
        pin_memory=dev.type == "cuda",
        drop_last=True,
    )
    cuda = dev.type == "cuda"
    gathered = GatheredBatches(torch.from_numpy(wav), targets, args.batch, pin=cuda, dev=dev)
    wav16 = torch.from_numpy(np.round(np.clip(wav, -1.0, 32767 / 32768) * 32768).astype(np.int16))
    loader16 = DataLoader(
        TensorDataset(wav16, targets),
        batch_size=args.batch,
        shuffle=True,
        num_workers=2,
        pin_memory=cuda,
        drop_last=True,
    )
    gathered16 = GatheredBatches(wav16, targets, args.batch, pin=cuda, dev=dev, reuse=cuda)
    plan = [
        ("cache loader alone", cache_loader, False),
        ("cache → GPU → train step", cache_loader, True),
        ("waveform loader alone", audio_loader, False),
        ("waveform → GPU log-mel → train step", audio_loader, True),
        ("waveform batch gather (pinned) alone", gathered, False),
        ("waveform batch gather → GPU log-mel → train step", gathered, True),
        ("int16 waveform loader → GPU log-mel → train step", loader16, True),
        ("int16 gather, reused pinned buffers, async copy alone", gathered16, False),
        ("int16 gather, reused pinned buffers → GPU log-mel → train step", gathered16, True),
    ]
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    print(f"\n{args.timm_name}, bf16 autocast, batch {args.batch}, {name}, torch {torch.__version__}")
    print(
        f"compute only (batch on GPU): {compute:.0f} clips/s — each row below as it is measured", flush=True
    )
    rows_out = [("compute only (batch on GPU)", compute)]
    for label, loader, train in plan:
        rows_out.append((label, run(loader, train, args.steps)))
        print(f"  {label}: {rows_out[-1][1]:.0f} clips/s", flush=True)
    print()
    print(table(["pipeline", "clips/s", "× compute ceiling"], [(k, v, v / compute) for k, v in rows_out]))


if __name__ == "__main__":
    main()
