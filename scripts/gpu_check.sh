#!/usr/bin/env bash
# The GPU check on a device machine, its output also in $OUT/gpu_check.log (options: scripts/gpu_check.py --help).
#   bash scripts/gpu_check.sh [--deadline-s 450] [--e2e-cmd CMD] [--extra-cmd CMD]...
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu_out}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
"${PYTHON:-python3}" scripts/gpu_check.py "$@" 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
