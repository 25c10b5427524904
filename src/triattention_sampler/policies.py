"""Key-scoring policies a :class:`~.cache.TriAttentionCache` round can use.

A policy returns, for one pruned layer, scores ``[B, Hkv, N]`` (higher = keep; ``-inf`` = not a
candidate). Protection (sinks, pinned prompt, recent window), layer combination (granularity), exact
top-k and compaction are shared by every policy, so baselines differ from TriAttention only in scoring.
"""
import torch


class TriAttentionPolicy:
    """TriAttention: trigonometric distance preference of the calibrated query centres + norm term."""

    name = "triattention"

    def layer_scores(self, cache, idx: int, protected: torch.Tensor) -> torch.Tensor:
        cfg, ops, layer = cache.config, cache.ops, cache.layers[idx]
        rope, n = layer.plan.rope, layer.length
        keys = layer.keys[:, :, :n]
        stats = cache._stats_for(idx, keys.device)
        offsets = ops.build_geometric_offsets(cfg.offset_max_length, keys.device)
        w, c = ops.round_weights(
            stats["q_mean_real"], stats["q_mean_imag"], stats["q_abs_mean"], rope.omega.to(keys.device),
            layer.next_pos, offsets, head_dim=rope.head_dim, style=rope.style, rotary_dim=rope.rotary_dim,
            aggregation=cfg.aggregation, freq_scale_sq=rope.freq_scale_sq(keys.device),
            q_pass_mean=stats.get("q_pass_mean"), disable_mlr=cfg.disable_mlr, disable_trig=cfg.disable_trig,
        )
        scores = ops.score_post_rope_keys(keys, w, c, style=rope.style, rotary_dim=rope.rotary_dim)
        candidates = layer.valid[:, :, :n] & ~protected
        if cfg.normalize_scores:
            return ops.reduce_query_heads(scores, candidates, group_aggregation=cfg.group_aggregation)
        b, hkv = keys.shape[:2]
        grouped = scores.view(b, hkv, -1, n)
        reduced = grouped.amax(2) if cfg.group_aggregation == "max" else grouped.mean(2)
        return reduced.masked_fill(~candidates, float("-inf"))
