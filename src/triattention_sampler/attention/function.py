"""``attn_implementation="triattention"``: attention over the compacted cache.

transformers calls the attention function after ``past_key_values.update`` and never passes the cache,
so the function finds the :class:`TriAttentionCache` that just ran ``update`` on this thread. From its
per-slot metadata it masks padding and filler slots (which the logical 2-D mask cannot address once
slots are compacted), applies causality over physical slots (kept tokens stay in temporal order, new
ones are appended) and sliding windows by RoPE position, and feeds online calibration with the
layer's pre-RoPE queries. GQA runs without repeating K/V: the query heads of a KV head are folded into
the query-length axis.
"""
from typing import Optional

import torch

from triattention.rope import inverse_rope

from ..cache import active_cache
from ..errors import CacheMisuseError
from .sdpa import build_mask, sdpa_grouped

NAME = "triattention"


def triattention_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                      mask_function=None, attention_mask: Optional[torch.Tensor] = None, **kwargs):
    """Hand the 2-D padding mask through (``None`` when nothing is padded); the attention function masks."""
    if attention_mask is None or attention_mask.dim() != 2:
        return attention_mask
    return None if bool(attention_mask.all()) else attention_mask.bool()


def triattention_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                           scaling: Optional[float] = None, **kwargs):
    if dropout:
        raise ValueError("triattention attention is inference-only (dropout must be 0)")
    window = kwargs.get("sliding_window") or None
    lq, n = query.shape[2], key.shape[2]
    cache = active_cache()
    layer = cache.serve(module, getattr(module, "layer_idx", None), key) if cache is not None else None
    if layer is None:
        return _plain_attention(query, key, value, attention_mask, scaling, window)
    if kwargs.get("use_cache") is False:
        raise CacheMisuseError("a TriAttentionCache was passed with use_cache=False: every step would feed the whole "
                               "sequence again; generate with use_cache=True (the default)")
    layout, idx = layer.layout, layer.index
    start = layout.last[0]
    if attention_mask is not None and attention_mask.dim() == 2 and layout.padding_checked != layout.step:
        layout.padding_checked = layout.step
        new_valid = attention_mask[:, -lq:].to(key.device, torch.bool)
        if not bool(new_valid.all()):
            layout.mark_padding(new_valid, new_valid.sum(-1).tolist())
    if cache.query_window is not None and cache.records_queries(idx):  # scorers that use recent attention
        cache.query_window.record(idx, query, layer.pos[:, 0, start:start + lq], scaling)
    if cache.collecting(idx):
        rope = layer.plan.rope
        pos = layer.pos[:, 0, start:start + lq]
        q_pre = inverse_rope(query, rope.omega.to(query.device), pos.clamp_min(0)[:, None, :], rope.scale,
                             style=rope.style, rotary_dim=rope.rotary_dim)
        cache.online.observe(idx, q_pre, layer.valid[:, 0, start:start + lq].float())
    if layout.all_valid and not window:
        return sdpa_grouped(query, key, value, None, scaling, causal=True)
    mask = build_mask(layer.valid[:, :, :n], layer.pos[:, :, :n], layer.pos[:, :, n - lq:n], lq, window)
    return sdpa_grouped(query, key, value, mask, scaling, causal=True)


def _plain_attention(query, key, value, attention_mask, scaling, window):
    """Any other cache (or none): physical slots are the last ``N`` logical positions."""
    b, lq, n = query.shape[0], query.shape[2], key.shape[2]
    if attention_mask is None and not window:
        return sdpa_grouped(query, key, value, None, scaling, causal=True)
    if attention_mask is not None and attention_mask.dim() == 4:  # a prepared mask from another mask function
        mask = attention_mask[:, :, :, -n:].bool()
        return sdpa_grouped(query, key, value, mask | ~mask.any(-1, keepdim=True), scaling, causal=False)
    valid = torch.ones(b, 1, n, dtype=torch.bool, device=query.device)
    if attention_mask is not None:
        valid = attention_mask[:, None, -n:].bool()
    kpos = torch.arange(n, device=query.device).expand(b, 1, n)
    mask = build_mask(valid, kpos, kpos[:, :, n - lq:], lq, window)
    return sdpa_grouped(query, key, value, mask, scaling, causal=False)
