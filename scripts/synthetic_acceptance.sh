#!/usr/bin/env bash
# The training acceptance run on CPU: a synthetic El Silencio dataset (12 species, fixed seed),
# every member trained for a few CPU minutes straight from audio, tracked in the embedded MLflow
# store, each scored on the held-out synthetic soundscape windows (never used for training or
# early stopping). Figures: printed at the end, in MLflow, and in each run's report/report.md.
#
#   bash scripts/synthetic_acceptance.sh [WORKDIR] [MINUTES_PER_MEMBER]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-${SILENCIO_HOME:-$HOME/.local/share/silencio}/acceptance}
MIN=${2:-5}
S=.venv/bin/silencio
mkdir -p "$WORK"
[ -f "$WORK/synth/SYNTHETIC.md" ] || $S data synth --out "$WORK/synth" --species 12 --clips 40 --soundscapes 8 --seed 0
common=(--data "$WORK/synth" --downsample 2 --lr 2e-3 --patience 30 --max-minutes "$MIN" --epochs 40
        --experiment silencio-acceptance)
$S train fit resnet50 "${common[@]}" --out "$WORK/resnet50"
$S train fit efficientnet_b0 "${common[@]}" --out "$WORK/efficientnet_b0"
$S train fit efficientnet_b0_lora "${common[@]}" --base "$WORK/efficientnet_b0/model.pt" --merge \
    --out "$WORK/efficientnet_b0_lora"
$S train fit cnn14_sed "${common[@]}" --sed-width 16 --out "$WORK/cnn14_sed"
$S train birdnet-head --data "$WORK/synth" --experiment silencio-acceptance --out "$WORK/birdnet_head"
echo
echo "held-out synthetic soundscape windows (seed 0), macro ROC-AUC per member:"
for m in resnet50 efficientnet_b0 efficientnet_b0_lora cnn14_sed birdnet_head; do
  printf '  %-22s %s\n' "$m" "$(grep -m1 'macro ROC-AUC (BirdCLEF 2025)' "$WORK/$m/report/report.md" | cut -d'|' -f3)"
done
