#!/usr/bin/env bash
# The demo's optional second half, the two-stage system, on `make demo`'s data and stage-one model:
#   proposals -> train --stage 2 -> evaluate --classifier -> export --classifier -> predict (one test image),
# then stage one vs the two-stage system at 0.5 / 1 / 2 / 4.8 FPI on the test split, and the elapsed time.
# Usage: scripts/demo_two_stage.sh HOURGLASS_BIN OUT_DIR [PYTHON]
#   OUT_DIR must hold `make demo`'s OUT_DIR/prepared and OUT_DIR/run/model.keras (scripts/demo.sh).
# Budget (environment): STAGE2_EPOCHS (4) x STAGE2_STEPS (50) batches of STAGE2_BATCH (32): a few minutes
# on 2 cores. DEMO_DICOM: the image to predict on (default: the first DICOM of OUT_DIR/synth that
# prepare put in the test split, scripts/test_split_image.py). PROPOSAL_FLAGS, EXPORT_FLAGS: extra
# `proposals` / `export` flags.
# The figures come from tiny models trained for minutes: they show the path, not the method's gain
# (README, "Two-stage system").
set -euo pipefail
HOURGLASS=${1:-hourglass}
OUT=${2:-demo_out}
PY=${3:-python3}
EPOCHS=${STAGE2_EPOCHS:-4}
STEPS=${STAGE2_STEPS:-50}
BATCH=${STAGE2_BATCH:-32}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
step() { printf '\n==> %s\n' "$*"; }
for need in "$OUT/prepared/manifest.json" "$OUT/run/model.keras"; do
  [ -e "$need" ] || { echo "demo-two-stage: $need not found: run \`make demo\` first (same DEMO=)" >&2; exit 2; }
done
SECONDS=0

step "1/5 proposals: stage one over every split of $OUT/prepared, a labelled patch per mark"
# shellcheck disable=SC2086
"$HOURGLASS" proposals --model "$OUT/run/model.keras" --data "$OUT/prepared" --out "$OUT/proposals" \
  --quiet ${PROPOSAL_FLAGS:-}

step "2/5 train the stage-two patch classifier ($EPOCHS x $STEPS steps of $BATCH, class-balanced)"
"$HOURGLASS" train --stage 2 --data "$OUT/proposals" --out "$OUT/run-stage2" --epochs "$EPOCHS" \
  --steps-per-epoch "$STEPS" --batch-size "$BATCH" --seed 7 --quiet

step "3/5 evaluate stage one and the two-stage system on the test split"
"$HOURGLASS" evaluate --model "$OUT/run/model.keras" --classifier "$OUT/run-stage2/model.keras" \
  --data "$OUT/prepared" --split test --out "$OUT/eval-two-stage" --quiet

step "4/5 export both stages as one SavedModel"
# shellcheck disable=SC2086
"$HOURGLASS" export --model "$OUT/run/model.keras" --classifier "$OUT/run-stage2/model.keras" \
  --base-path "$OUT/serving/hourglass-two-stage" --evaluation "$OUT/eval-two-stage" ${EXPORT_FLAGS:-}

step "5/5 predict on one test image with the combined export, at the 4.8-FPI operating point"
dicom=${DEMO_DICOM:-$("$PY" "$HERE/test_split_image.py" "$OUT/prepared" "$OUT/synth/annotations.csv" "$OUT/synth" test)}
version=$(ls "$OUT/serving/hourglass-two-stage" | grep -E '^[0-9]+$' | sort -n | tail -n 1)
"$HOURGLASS" predict --saved-model "$OUT/serving/hourglass-two-stage/$version" --operating-point 4.8 \
  --overlay-dir "$OUT/predict-two-stage" "$dicom"

"$PY" - "$OUT/eval-two-stage/froc.json" "$SECONDS" <<'PYEOF'
import json, sys
froc = json.load(open(sys.argv[1]))
table = froc["comparison"]["sensitivity_at_fpi"]
print("\nsensitivity on the test split (%d images, %d malignant findings)" % (froc["num_images"], froc["num_malignant_findings"]))
print("%-10s %s" % ("FPI", "  ".join("%6s" % k for k in ("0.5", "1", "2", "4.8")) + "     max"))
for system in ("stage_one", "two_stage"):
    cells = "  ".join("%6.3f" % table[k][system] if table[k][system] is not None else "   n/a" for k in ("0.5", "1", "2", "4.8"))
    print("%-10s %s  %6.3f" % (system.replace("_", " "), cells, froc["comparison"]["max_sensitivity"][system]))
print("combination: %s; elapsed: %.1f min" % (froc["two_stage"]["combination"]["name"], int(sys.argv[2]) / 60))
PYEOF
printf '\nDone. %s/eval-two-stage/froc.json and froc.png; SavedModel: %s/serving/hourglass-two-stage/%s\n' "$OUT" "$OUT" "$version"
