#!/usr/bin/env bash
# TFLite export of a trained member (the edge student, usually) with litert-torch, in its own
# environment (.venv-export): litert-torch pins other versions of pydantic & co than the main
# environment, so it never shares one with it. First run installs it (a few minutes, offline from
# the local mirror where there is one); later runs reuse it.
#
#   bash scripts/export_tflite.sh CHECKPOINT OUT_DIR --data DATASET [--min-agreement 0.9] [--max-auc-drop 0.02]
#
# Writes OUT_DIR/tflite/ (an edge model package, format v2) after checking the TFLite model against
# ONNX fp32 / PyTorch on real validation windows of DATASET; refuses to publish when it is worse
# than the thresholds.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=.venv-export
if [ ! -f "$ENV/.silencio-export-installed" ]; then
  python3.11 -m venv "$ENV"
  "$ENV/bin/pip" install -q --upgrade pip
  "$ENV/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1" timm peft litert-torch \
      numpy soundfile soxr platformdirs pyyaml scikit-learn onnx onnxruntime tqdm
  "$ENV/bin/pip" install -q --no-deps -e .
  touch "$ENV/.silencio-export-installed"
fi
exec "$ENV/bin/python" -m training.tflite "$@"
