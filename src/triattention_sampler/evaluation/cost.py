"""What one round's scoring reads and computes, per method (an analytic count, beside the measured time).

Counted per round for ``n_keys`` cached keys per pruned layer (``budget + interval`` when a round fires):

* TriAttention: each scored layer reads its keys once (``Hkv * N * D`` elements) plus the round's weights
  (``Hq * (D + F)`` float32) and does one ``D``-long dot product per query head and key plus the pair-norm
  term (``2 Hq D + 3 Hkv F + 2 Hq F`` FLOPs per key). ``score_layer_stride`` divides the scored layers.
* SnapKV-style: every layer reads its keys and the ``W`` recorded queries and computes ``W`` attention
  logits per query head and key (``2 Hq W D`` FLOPs) plus the softmax (~5 per logit). The attention
  probabilities are NOT counted as bytes (a fused kernel keeps them on chip), which favours SnapKV.
* StreamingLLM reads one position per slot (int64); random reads nothing; key-norm reads the keys.
"""
from typing import Dict

from ..cache import scored_layer_ids
from ..model_info import ModelInfo
from ..scorers import KeyNormScorer, RandomScorer, SnapKVScorer, StreamingLLMScorer, TriAttentionScorer
from ..scorers.registry import METHODS, parse_method, resolve


def scoring_cost(method: str, info: ModelInfo, n_keys: int, *, element_bytes: int = 2,
                 budget: int = 256, interval: int = 64) -> Dict[str, float]:
    """``bytes`` read, ``flops`` and ``scored_layers`` of one round's scoring for a method spec."""
    name, _ = parse_method(method)
    scorer, cfg = resolve(method, budget, interval=interval)
    pruned = list(info.pruned_layers)
    hq, hkv, d = info.num_heads, info.num_kv_heads, info.head_dim
    f = info.rope.rotary_dim // 2
    n = n_keys
    keys = hkv * n * d * element_bytes
    if METHODS[name].unbounded:
        layers, nbytes, flops = 0, 0, 0
    elif isinstance(scorer, TriAttentionScorer):
        layers = len(scored_layer_ids(pruned, cfg.score_layer_stride))
        nbytes = layers * (keys + hq * (d + f) * 4)
        flops = layers * n * (2 * hq * d + 3 * hkv * f + 2 * hq * f)
    elif isinstance(scorer, SnapKVScorer):
        w = scorer.query_window
        layers = len(pruned)
        nbytes = layers * (keys + hq * w * d * element_bytes)
        flops = layers * hq * w * n * (2 * d + 5)
    elif isinstance(scorer, KeyNormScorer):
        layers, nbytes, flops = len(pruned), len(pruned) * keys, len(pruned) * hkv * n * 2 * d
    elif isinstance(scorer, StreamingLLMScorer):
        layers, nbytes, flops = len(pruned), len(pruned) * hkv * n * 8, 0
    elif isinstance(scorer, RandomScorer):
        layers, nbytes, flops = len(pruned), 0, 0
    else:
        raise ValueError(f"no cost model for method {method!r}")
    return {"bytes": float(nbytes), "flops": float(flops), "scored_layers": layers}
