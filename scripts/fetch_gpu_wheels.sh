#!/usr/bin/env bash
# Download into .whl/ the wheels the GPU image lacks (CPython 3.12, manylinux x86_64). On the device,
# scripts/gpu_check.py installs them with `pip install --no-index --no-deps --target /tmp/site .whl/*.whl`
# and puts /tmp/site first on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl transformers==5.22.2 kernels==0.17.2 tomlkit regex
ls -1 .whl
