"""``attn_implementation="triattention"``: attention over the compacted cache.

transformers calls the attention function after ``past_key_values.update`` and never passes the cache,
so the function finds the :class:`TriAttentionCache` that just ran ``update`` on this thread. From its
per-slot metadata it masks padding and filler slots (which the logical 2-D mask cannot address once
slots are compacted), applies causality over physical slots (kept tokens stay in temporal order, new
ones are appended) and sliding windows by RoPE position, and feeds online calibration with the
layer's pre-RoPE queries. GQA runs without repeating K/V: the query heads of a KV head are folded into
the query-length axis.
"""
import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from triattention.rope import inverse_rope

from .cache import active_cache

NAME = "triattention"


def triattention_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                      mask_function=None, attention_mask: Optional[torch.Tensor] = None, **kwargs):
    """Hand the 2-D padding mask through (``None`` when nothing is padded); the attention function masks."""
    if attention_mask is None or attention_mask.dim() != 2:
        return attention_mask
    return None if bool(attention_mask.all()) else attention_mask.bool()


def _sdpa_grouped(query, key, value, mask: Optional[torch.Tensor], scaling: Optional[float], causal: bool):
    """SDPA with ``query [B, Hq, Lq, D]``, ``key/value [B, Hkv, N, D]``, ``mask [B, Hkv|1, Lq, N]`` bool."""
    b, hq, lq, d = query.shape
    hkv = key.shape[1]
    group = hq // hkv
    q = query.reshape(b, hkv, group * lq, d)
    if mask is not None:
        mask = mask.expand(b, hkv, lq, mask.shape[-1])[:, :, None].expand(b, hkv, group, lq, mask.shape[-1])
        mask = mask.reshape(b, hkv, group * lq, mask.shape[-1])
    elif causal and lq > 1:
        n = key.shape[2]
        mask = torch.ones(lq, n, dtype=torch.bool, device=query.device).tril(n - lq)
        mask = mask.repeat(group, 1)[None, None]
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(b, hq, lq, value.shape[-1]).transpose(1, 2).contiguous(), None


def _build_mask(valid, kpos, qpos, lq: int, window: Optional[int]):
    """``valid [B, H, N]``, positions ``kpos [B, H, N]``, ``qpos [B, H, Lq]`` -> bool ``[B, H, Lq, N]``."""
    n = valid.shape[-1]
    causal = torch.ones(lq, n, dtype=torch.bool, device=valid.device).tril(n - lq)
    mask = valid[:, :, None, :] & causal
    if window:
        mask &= kpos[:, :, None, :] > qpos[..., None] - window
    # Queries that see nothing (padding positions) attend everywhere: their output is never used,
    # but a NaN would leak into later layers through masked-but-multiplied values.
    return mask | ~mask.any(-1, keepdim=True)


def triattention_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                           scaling: Optional[float] = None, **kwargs):
    if dropout:
        raise ValueError("triattention attention is inference-only (dropout must be 0)")
    window = kwargs.get("sliding_window") or None
    lq, n = query.shape[2], key.shape[2]
    cache = active_cache()
    layer_idx = getattr(module, "layer_idx", None)
    layer = cache.layers[layer_idx] if cache is not None and layer_idx is not None else None
    if layer is not None and not (layer.is_initialized and layer.length == n
                                  and key.data_ptr() == layer.keys.data_ptr()):
        layer = None  # this call is not served by the active TriAttentionCache
    if layer is None:
        return _plain_attention(query, key, value, attention_mask, scaling, window)
    if attention_mask is not None and attention_mask.dim() == 2:
        layer.mark_padding(attention_mask[:, -lq:])
    if cache.query_window and layer.plan.prunable:  # policies that score with recent queries (SnapKV)
        cache.record_queries(layer_idx, query, layer.pos[:, 0, layer._last[0]:layer._last[0] + lq], scaling)
    if cache.collecting and layer.plan.prunable:
        start = layer._last[0]
        rope = layer.plan.rope
        pos = layer.pos[:, 0, start:start + lq]
        q_pre = inverse_rope(query, rope.omega.to(query.device), pos.clamp_min(0)[:, None, :], rope.scale,
                             style=rope.style, rotary_dim=rope.rotary_dim)
        cache.observe_queries(layer_idx, q_pre, layer.valid[:, 0, start:start + lq].float())
    if layer.all_valid and not window:
        return _sdpa_grouped(query, key, value, None, scaling, causal=True)
    mask = _build_mask(layer.valid[:, :, :n], layer.pos[:, :, :n], layer.pos[:, :, n - lq:n], lq, window)
    return _sdpa_grouped(query, key, value, mask, scaling, causal=True)


def _plain_attention(query, key, value, attention_mask, scaling, window):
    """Any other cache (or none): physical slots are the last ``N`` logical positions."""
    b, lq, n = query.shape[0], query.shape[2], key.shape[2]
    if attention_mask is None and not window:
        return _sdpa_grouped(query, key, value, None, scaling, causal=True)
    if attention_mask is not None and attention_mask.dim() == 4:  # a prepared mask from another mask function
        mask = attention_mask[:, :, :, -n:].bool()
        return _sdpa_grouped(query, key, value, mask | ~mask.any(-1, keepdim=True), scaling, causal=False)
    valid = torch.ones(b, 1, n, dtype=torch.bool, device=query.device)
    if attention_mask is not None:
        valid = attention_mask[:, None, -n:].bool()
    kpos = torch.arange(n, device=query.device).expand(b, 1, n)
    mask = _build_mask(valid, kpos, kpos[:, :, n - lq:], lq, window)
    return _sdpa_grouped(query, key, value, mask, scaling, causal=False)


def register() -> None:
    """Make ``attn_implementation="triattention"`` available (idempotent; done on import of the sampler)."""
    AttentionInterface.register(NAME, triattention_attention)
    AttentionMaskInterface.register(NAME, triattention_mask)


@contextlib.contextmanager
def use_triattention_attention(model):
    """Temporarily switch ``model`` to the triattention attention function."""
    register()
    previous = model.config._attn_implementation
    if previous != NAME:
        model.set_attn_implementation(NAME)
    try:
        yield model
    finally:
        if previous != NAME:
            model.set_attn_implementation(previous)
