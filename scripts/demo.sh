#!/usr/bin/env bash
# The README's demo: synthetic mammograms -> prepare -> train -> evaluate -> export -> predict.
# Usage: scripts/demo.sh HOURGLASS_BIN OUT_DIR
set -euo pipefail
HOURGLASS=${1:-hourglass}
OUT=${2:-demo_out}
mkdir -p "$OUT"
"$HOURGLASS" --version
