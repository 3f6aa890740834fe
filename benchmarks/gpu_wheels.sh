#!/usr/bin/env bash
# Download the wheels benchmarks/gpu_all.sh needs on the GPU image (which has torch, timm, peft,
# onnx, onnxruntime, numpy, yaml, tqdm, threadpoolctl but not these), for its Python 3.12 on
# x86-64 Linux, into .whl/ (git-ignored; ~3 MB). Run here, where pip can reach PyPI; carry .whl.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl \
  soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0 platformdirs==4.14.8
ls -la .whl
du -sh .whl
