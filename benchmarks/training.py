"""Training throughput per member on this CPU (clips/s of forward + backward + AdamW step).

    .venv/bin/python benchmarks/training.py [--batch 16 --steps 4 --threads 2]

Every member at its real size on full-resolution log-mel input (128 × 316), and with the
2× input down-sampling used for CPU-budget runs; the first row (ResNet-50, full resolution) is
the baseline of the ratio column. Inputs are random features: this isolates the model; the input
pipeline is measured by benchmarks/etl.py and, on a GPU, benchmarks/gpu_training.sh.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# The script's folder holds training.py, which would shadow the `training` package: drop it from
# the path and import the project (and our table helper) from the repository root.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from benchmarks._table import table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from training.models import build_model, member_config, save_checkpoint
    from training.models.factory import SpecAugment

    torch.set_num_threads(args.threads)
    tmp = Path("/tmp/silencio_bench_base.pt")
    members = [
        ("resnet50", {}),
        ("efficientnet_b0", {}),
        ("efficientnet_b0_lora", {}),
        ("cnn14_sed", {"sed_width": 64}),
        ("cnn14_sed", {"sed_width": 16}),
    ]
    rows, base = [], None
    for ds in (1, 2):
        for name, kw in members:
            if name == "efficientnet_b0_lora":
                from shared_features import LabelSpace, Species

                labels = LabelSpace(Species(f"s{i}", f"S {i}", f"S {i}", "Aves") for i in range(206))
                save_checkpoint(
                    tmp, build_model(member_config("efficientnet_b0", input_downsample=ds), 206), labels
                )
                kw = {"base_checkpoint": str(tmp)}
            model = build_model(member_config(name, input_downsample=ds, **kw), 206)
            model.augment = SpecAugment()
            model.train()
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
            x = torch.randn(args.batch, 128, 316)
            y = (torch.rand(args.batch, 206) < 0.02).float()
            times = []
            for i in range(args.steps + 1):
                t = time.perf_counter()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad()
                if i:
                    times.append(time.perf_counter() - t)
            rate = args.batch / (sum(times) / len(times))
            base = base or rate
            label = name + (f" (width {kw['sed_width']})" if "sed_width" in kw else "")
            n_params = sum(p.numel() for p in model.parameters())
            n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
            rows.append(
                (label, f"{ds}×", f"{n_params / 1e6:.1f} M", f"{n_train / 1e6:.2f} M", rate, rate / base)
            )
    print(f"batch {args.batch}, {args.threads} threads, torch {torch.__version__}, 206 classes\n")
    print(table(["member", "input pool", "params", "trainable", "clips/s", "× ResNet-50 full"], rows))


if __name__ == "__main__":
    main()
