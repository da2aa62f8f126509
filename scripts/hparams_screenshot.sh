#!/usr/bin/env bash
# Screenshots of TensorBoard's HParams tab on a 4-trial search (docs/tensorboard-hparams*.png):
#   synth -> prepare -> tune (4 trials) -> tensorboard --logdir TUNE/logs -> headless Chromium -> stop.
# Usage: scripts/hparams_screenshot.sh [HOURGLASS_BIN] [WORK_DIR] [DOCS_DIR]
#   HOURGLASS_BIN  default: `hourglass` on PATH; tensorboard and python are taken from the same
#                  bin/ directory when they are there (a venv), else from PATH
#   WORK_DIR       generated data (synthetic DICOMs, PREP, TUNE); default hparams_shot_out, reused
#                  (tune resumes), never committed
#   DOCS_DIR       where the PNGs go; default docs
# Environment: PORT (default 6006), CHROMIUM (default chromium: Debian's package, `apt-get install
# chromium`), TRIALS (default 4).
# Tiny on purpose (about 15 minutes on 2 shared CPU cores, nearly all of it the 4 trials): 40 synthetic images
# of 320x256 at --size 256, the tiny preset, 2 epochs of 15 steps per trial. The values it shows say
# nothing about the loss settings; the point is the dashboard.
set -euo pipefail
HOURGLASS=${1:-hourglass}
WORK=${2:-hparams_shot_out}
DOCS=${3:-docs}
PORT=${PORT:-6006}
CHROMIUM=${CHROMIUM:-chromium}
TRIALS=${TRIALS:-4}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=$(dirname "$(command -v "$HOURGLASS")")
TENSORBOARD=$BIN/tensorboard; [ -x "$TENSORBOARD" ] || TENSORBOARD=tensorboard
PYTHON=$BIN/python; [ -x "$PYTHON" ] || PYTHON=python3
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
mkdir -p "$WORK" "$DOCS"
step() { printf '\n==> %s\n' "$*"; }

if [ ! -f "$WORK/synth/annotations.csv" ]; then
  step "1/5 synthesise 40 small mammograms into $WORK/synth"
  "$HOURGLASS" synth --out "$WORK/synth" --images 40 --seed 3 --height 320 --width 256 \
    --malignant-rate 0.3 --high-risk-rate 0.1 --benign-rate 0.2 --no-progress > "$WORK/synth.json"
fi

if [ ! -f "$WORK/prepared/manifest.json" ]; then
  step "2/5 prepare at --size 256 into $WORK/prepared"
  # 256 px, not 128: the default sigma bank "4,8,16,32" resolves below the 0.5 heatmap-px minimum
  # under 192 px, and that trial would fail. A fixed --salt: the patient split (hashed ids) is then the
  # one of the committed screenshots (examples_hash 25f24361...).
  "$HOURGLASS" prepare --annotations "$WORK/synth/annotations.csv" --images-root "$WORK/synth" \
    --out "$WORK/prepared" --size 256 --val-fraction 0.3 --test-fraction 0.1 \
    --salt dfea0d29e198b4733b2dff11f8e4342e --quiet > "$WORK/prepare.json"
fi

step "3/5 tune: $TRIALS random trials, tiny preset, 2 x 15 steps each (resumes if rerun)"
"$HOURGLASS" tune --data "$WORK/prepared" --out "$WORK/tune" --max-trials "$TRIALS" --epochs 2 \
  --steps-per-epoch 15 --batch-size 4 --preset tiny --seed 1 --verbose 0 > "$WORK/tune.json"
completed=$(grep -c ',COMPLETED,' "$WORK/tune/trials.csv" || true)
echo "trials completed: $completed of $TRIALS"
[ "$completed" -ge "$TRIALS" ] || { echo "fewer completed trials than $TRIALS: see $WORK/tune/trials.csv" >&2; exit 1; }

step "4/5 tensorboard --logdir $WORK/tune/logs on 127.0.0.1:$PORT"
"$TENSORBOARD" --logdir "$WORK/tune/logs" --host 127.0.0.1 --port "$PORT" > "$WORK/tensorboard.log" 2>&1 &
TB_PID=$!
trap 'kill "$TB_PID" 2>/dev/null || true; wait "$TB_PID" 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  "$PYTHON" - "$PORT" <<'EOF' 2>/dev/null && break
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/data/plugins_listing", timeout=2)
EOF
  kill -0 "$TB_PID" 2>/dev/null || { echo "tensorboard exited: see $WORK/tensorboard.log" >&2; exit 1; }
  sleep 1
done

step "5/5 headless Chromium: table and parallel-coordinates views into $DOCS"
# A layout 2300 CSS px wide (all 12 table columns fit), rendered at 0.75: 1725 x 750 px PNGs.
"$PYTHON" "$HERE/cdp_screenshot.py" "http://127.0.0.1:$PORT/#hparams" --trials "$TRIALS" \
  --chromium "$CHROMIUM" --width 2300 --height 1000 --scale 0.75 --all-columns \
  table="$DOCS/tensorboard-hparams.png" parallel="$DOCS/tensorboard-hparams-parallel.png"
ls -l "$DOCS"/tensorboard-hparams*.png
