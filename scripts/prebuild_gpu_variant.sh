#!/usr/bin/env bash
# Build, on this CPU-only machine, the CUDA variant the GPU image would build: torch 2.11.0+cu130 (PyPI's default
# build), Python 3.12, nvcc 13.0, sm_90, into build/torch211-cxx11-cu130-x86_64-linux (stamp in _build_cuda/).
# Carried to the GPU (`carry`: build, _build_cuda, .whl, fetched here if absent), gpu_check's build step finds it
# up to date (same inputs hash; both name the ops after that hash, --content-id, not after git, whose view of the
# copy there may differ) and skips ~47 s of device time; it is also a second data point for the throw crash, built
# by this machine's gcc instead of the image's. The venv (.venv-gpu211, ~4.7 GB, mostly CUDA libraries) is kept
# for the next run.
# Ends with what a run sends (tracked files plus the carried folders) against the device tool's 64 MiB.
#   bash scripts/prebuild_gpu_variant.sh [--archs 9.0]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-gpu211
PY312=${PY312:-}
if [ -z "$PY312" ]; then
  if command -v python3.12 >/dev/null 2>&1 && python3.12 --version >/dev/null 2>&1; then
    PY312=python3.12
  elif command -v pyenv >/dev/null 2>&1 && pyenv versions --bare | grep -q '^3\.12'; then
    PY312="$(pyenv root)/versions/$(pyenv versions --bare | grep '^3\.12' | tail -1)/bin/python3.12"
  else
    echo "prebuild_gpu_variant: no Python 3.12 found (set PY312=/path/to/python3.12)" >&2
    exit 2
  fi
fi
if [ -z "${CUDA_HOME:-}" ]; then  # the toolkit whose headers torch's build needs (nvcc may sit elsewhere)
  for dir in /usr/local/cuda $(ls -d /usr/local/cuda-* 2>/dev/null | sort -V -r); do
    if [ -f "$dir/include/cuda_runtime.h" ]; then CUDA_HOME=$dir; break; fi
  done
fi
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [ ! -f "$CUDA_HOME/include/cuda_runtime.h" ]; then
  echo "prebuild_gpu_variant: no CUDA headers under $CUDA_HOME (set CUDA_HOME, e.g. /usr/local/cuda-13.0)" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[prebuild] creating $VENV with torch==2.11.0 (PyPI: +cu130; several GB)" >&2
  "$PY312" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check torch==2.11.0 ninja 2>&1 \
    | grep -v "^WARNING: Location" >&2 || true
fi
"$VENV/bin/python" -c "import torch; assert torch.__version__ == '2.11.0+cu130', torch.__version__"
ARCHS=("9.0")
if [ "${1:-}" = "--archs" ]; then shift; ARCHS=("$@"); fi
CUDA_HOME="$CUDA_HOME" "$VENV/bin/python" scripts/build_cuda_variant.py --content-id --archs "${ARCHS[@]}" -j "$(nproc)"
# The wheels the GPU image lacks travel as .whl; without them gpu_check stops at `import kernels` on the device.
if ! ls .whl/kernels-*.whl .whl/transformers-*.whl >/dev/null 2>&1; then
  echo "[prebuild] fetching the wheels the GPU image lacks into .whl/" >&2
  PYTHON="$VENV/bin/python" bash scripts/fetch_gpu_wheels.sh >&2
fi
# What one `run` sends: the tracked files plus the carried folders, 64 MiB at most (the device tool's limit).
tracked=$(git ls-files -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)  # one du, one total
carried=$(du -cb build _build_cuda .whl | tail -1 | cut -f1)  # .whl exists: fetched above if it was missing
total=$((tracked + carried))
echo "[prebuild] a run sends $((total / 1048576)) MiB of 64 (tracked files $((tracked / 1048576)),"\
  "carried build _build_cuda .whl $((carried / 1048576)))"
if [ "$total" -gt $((64 * 1048576)) ]; then
  echo "prebuild_gpu_variant: over the device tool's 64 MiB: remove old variants from build/ or _build_cuda/" >&2
  exit 1
fi
