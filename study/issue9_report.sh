#!/usr/bin/env bash
# Tables + plot of the issue-9 quality comparison (README / docs/EVALUATION.md) from the two held-out runs:
#   M="triattention-recommended,triattention,triattention-online,streamingllm,snapkv,snapkv[kernel_size=1,recent_window=32],random,knorm"
#   triattention eval --threads 1 --methods "$M" --out results/issue9 --name essays --no-plot
#   triattention eval --threads 1 --text hamlet --methods "$M" --out results/issue9 --name hamlet --no-plot
set -euo pipefail
cd "$(dirname "$0")/.."
S="snapkv[kernel_size=1,recent_window=32]"
.venv/bin/python study/quality_report.py results/issue9/essays.json results/issue9/hamlet.json \
  --label "triattention-recommended=TriAttention recommended (online, every 4th layer)" \
  --label "triattention-online=TriAttention paper scoring, online statistics" \
  --label "triattention=TriAttention paper default (Milton file)" \
  --label "$S=SnapKV-style, strongest (window 32, no pooling, last 32 protected)" \
  --label "snapkv=SnapKV (window 32, max-pool 7)" --label "streamingllm=StreamingLLM (4 sinks)" \
  --label "random=random" --label "knorm=key-norm" --versus "$S" --plot docs/img/issue9_quality.png
