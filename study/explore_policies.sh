#!/usr/bin/env bash
# Issue 9 exploration: one change at a time from TriAttention-online, on a DEVELOPMENT segment of the essays
# (tokens 16384..20480; the reported test segments are essays 0..4096 and Hamlet 0..4096, never used here).
# Usage: bash study/explore_policies.sh [batch ...]   (batches a-g, d/e = combinations after a-c, f/g = per-layer budgets; results in results/dev/)
# The options the study rejected (position_segments, layer_aggregation, online_refresh/online_decay/online_weight,
# score_normalization) left the product in the core redesign (issue 13); batches that use them run at commit 18478ae:
#   git worktree add /tmp/study-18478ae 18478ae && cd /tmp/study-18478ae && bash scripts/explore_policies.sh b
set -euo pipefail
cd "$(dirname "$0")/.."
source .venv/bin/activate
DEV=(--offset 16384 --threads "${THREADS:-2}" --out results/dev --no-plot)
T=triattention-online
run() { local name=$1; shift; triattention eval "${DEV[@]}" --name "$name" --methods "$(IFS=,; echo "$*")"; }
for batch in "${@:-a b c}"; do
  case $batch in
    a) run explore_a "$T[recent_window=16]" "$T[recent_window=32]" "$T[recent_window=64]" "$T[sink_tokens=4]" \
         "$T[position_segments=4]" "$T[position_segments=8]" \
         "$T[score_layer_stride=2]" "$T[score_layer_stride=4]" "$T[score_layer_stride=8]" ;;
    b) run explore_b "$T[normalize_scores=false]" "$T[group_aggregation=mean]" "$T[layer_aggregation=max]" \
         "$T[aggregation=max]" "$T[granularity=union]" "$T[granularity=per_layer_head]" \
         "$T[online_refresh=true]" "$T[online_refresh=true,online_decay=0.5]" \
         "$T[offset_max_length=4096]" "$T[offset_max_length=512]" "triattention[online_weight=0.5]" ;;
    c) run explore_c "snapkv[kernel_size=1]" "snapkv[recent_window=32]" "snapkv[kernel_size=1,recent_window=32]" \
         "snapkv[query_window=64]" "streamingllm[sink_tokens=0]" "knorm" ;;
    d) run explore_d "$T[score_normalization=softmax]" "$T[score_normalization=softmax,group_aggregation=mean]" \
         "$T[score_layer_stride=3]" "$T[score_layer_stride=4,online_refresh=true]" \
         "$T[score_layer_stride=2,online_refresh=true]" "$T[score_layer_stride=4,recent_window=64]" ;;
    e) run explore_e "$T" "$T[score_layer_stride=4]" "$T[score_normalization=softmax,score_layer_stride=4]" \
         "$T[score_normalization=softmax,score_layer_stride=2]" "snapkv[kernel_size=1,recent_window=32]" streamingllm ;;
    f) run explore_f "$T[layer_budget_slope=0.5]" "$T[layer_budget_slope=-0.5]" ;;
    g) run explore_g "$T[score_layer_stride=4,layer_budget_slope=-0.5]" "$T[layer_budget_slope=-0.25]" ;;
    *) echo "unknown batch $batch" >&2; exit 2 ;;
  esac
done
