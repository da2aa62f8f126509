#!/usr/bin/env bash
# The README's demo on built-in synthetic data:
#   synth -> prepare -> train (patch phase, then full images) -> evaluate -> export -> predict.
# Usage: scripts/demo.sh HOURGLASS_BIN OUT_DIR
# Sized to finish in about 10 minutes on 2 CPU cores; the numbers it prints come from a tiny model
# trained for a few minutes and say nothing about the paper's results (see README, "Ablation").
set -euo pipefail
HOURGLASS=${1:-hourglass}
OUT=${2:-demo_out}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
mkdir -p "$OUT"
step() { printf '\n==> %s\n' "$*"; }

step "1/6 synthesise mammograms (DICOM + canonical CSV) into $OUT/synth"
"$HOURGLASS" synth --out "$OUT/synth" --images 480 --seed 7 \
  --malignant-rate 0.25 --high-risk-rate 0.1 --benign-rate 0.15

step "2/6 prepare TFRecords (patient-level split, PHI hashed) into $OUT/prepared"
"$HOURGLASS" prepare --annotations "$OUT/synth/annotations.csv" --images-root "$OUT/synth" \
  --out "$OUT/prepared" --size 256 --workers 2 --val-fraction 0.15 --test-fraction 0.25

step "3/6 train the tiny Hourglass with the hypersensitive loss (patch phase, then full images)"
# The training defaults (loss geometry resolved to this PREP's 256 px, principle (a) off, Adam 1e-3 with
# warmup + cosine decay); only the budget is the demo's: 12 x 100 patch steps + 4 x 100 whole-image steps.
"$HOURGLASS" train --data "$OUT/prepared" --out "$OUT/run" --preset tiny --phase both \
  --patch-epochs 12 --full-epochs 4 --steps-per-epoch 100 --batch-size 8 --seed 7

step "4/6 evaluate: FROC on the test split"
"$HOURGLASS" evaluate --model "$OUT/run/model.keras" --data "$OUT/prepared" --split test --out "$OUT/eval"

step "5/6 export a SavedModel for TensorFlow Serving"
"$HOURGLASS" export --model "$OUT/run/model.keras" --base-path "$OUT/serving/hourglass" \
  --evaluation "$OUT/eval"

step "6/6 predict on one DICOM with the exported model (no server needed), at the 4.8-FPI operating point"
# sed reads to the end: `head -n 1` would close the pipe early, sort would die of SIGPIPE, and with
# pipefail the demo would stop here (exit 141) once the listing outgrows what sort writes in one go.
first_dicom=$(find "$OUT/synth/images" -name '*.dcm' | sort | sed -n 1p)
"$HOURGLASS" predict --saved-model "$OUT/serving/hourglass/1" --operating-point 4.8 --overlay-dir "$OUT/predict" "$first_dicom"

printf '\nDone. FROC: %s/eval/froc.json and froc.png; overlays: %s/eval/overlays; SavedModel: %s/serving/hourglass/1\n' "$OUT" "$OUT" "$OUT"
