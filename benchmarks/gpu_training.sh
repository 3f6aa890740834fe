#!/usr/bin/env bash
# GPU training throughput on a machine with an NVIDIA GPU and PyTorch + timm installed (no
# internet needed). Missing pure-Python/wheel dependencies (soundfile, soxr, platformdirs, cffi)
# can be installed from a folder of wheels: WHEELS=path/to/wheels bash benchmarks/gpu_training.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/silencio_site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/silencio_site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 benchmarks/gpu_training.py "$@"
