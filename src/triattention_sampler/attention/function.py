"""``attn_implementation="triattention"``: attention over the compacted cache.

transformers calls the attention function after ``past_key_values.update`` and never passes the cache, so the
function finds the :class:`TriAttentionCache` whose ``update`` just ran on this thread. From the layer's slot table
it masks padding and filler slots (which the logical 2-D mask cannot address once slots are compacted) and applies
sliding windows by RoPE position; it feeds the scorer what it needs recorded (online statistics from pre-RoPE
queries, recent queries). The mask function reads the 2-D padding mask once per forward (the only host read of a
step, and none when nothing is padded: ``generate`` then passes no mask at all).
"""
import threading
from typing import List, Optional

import torch

from triattention.rope import inverse_rope

from ..cache import active_cache
from ..cache.static import step_mask
from ..errors import CacheMisuseError
from .sdpa import attend_somewhere, causal_attention, masked_attention, per_head_masked_attention

NAME = "triattention"
OBSERVE_TOKENS = 2048  # queries inverted and accumulated at once (bounds the float64 working set of a prefill)
_MASKS = threading.local()
_MASK_HOOK = None  # run at every forward before any layer (set by ``triattention_sampler.flag``)


def set_mask_hook(fn) -> None:
    """Run ``fn()`` from the mask function, i.e. once per forward before any layer stores anything."""
    global _MASK_HOOK
    _MASK_HOOK = fn


def triattention_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                      mask_function=None, attention_mask: Optional[torch.Tensor] = None, **kwargs):
    """Hand the 2-D padding mask through (``None`` when nothing is padded); the attention function masks.

    Also notes how many of this step's ``q_length`` tokens are real per row, so the layers need not read it."""
    cache = active_cache()
    if cache is not None and cache.static and cache.mask_pending:  # a fixed-shape step: the cache's own inputs
        cache.mask_pending = False
        return step_mask(cache, q_length, attention_mask)
    if _MASK_HOOK is not None:
        _MASK_HOOK()
    if attention_mask is None or attention_mask.dim() != 2:
        return attention_mask
    mask = attention_mask.bool()
    totals, new = torch.stack([mask.sum(-1), mask[:, -q_length:].sum(-1)]).tolist()  # one host read per forward
    if all(t == mask.shape[-1] for t in totals):
        return None
    _MASKS.last = (mask, new)
    return mask


def _new_token_counts(attention_mask: torch.Tensor, lq: int) -> List[int]:
    last = getattr(_MASKS, "last", None)
    if last is not None and last[0] is attention_mask:
        return last[1]
    return attention_mask[:, -lq:].sum(-1).tolist()


def triattention_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                           scaling: Optional[float] = None, **kwargs):
    if dropout:
        raise ValueError("triattention attention is inference-only (dropout must be 0)")
    window = kwargs.get("sliding_window") or None
    lq, n = query.shape[2], key.shape[2]
    cache = active_cache()
    if cache is not None and cache.static and cache.frozen:
        return _static_attention(cache, module, query, key, value, scaling)
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
        counts = _new_token_counts(attention_mask, lq)
        if any(c != lq for c in counts):
            layout.mark_padding(attention_mask[:, -lq:].to(key.device, torch.bool), counts)
    if cache.query_window is not None and cache.records_queries(idx):  # scorers that use recent attention
        cache.query_window.record(idx, query, layer.pos[:, 0, start:start + lq], scaling)
    if cache.collecting(idx):
        _observe(cache, layer, query, start)
    if layout.all_valid and not window:
        return causal_attention(query, key, value, scaling)
    heads = slice(None) if not layout.uniform_heads else slice(0, 1)
    return masked_attention(query, key, value, scaling, layer.valid[:, heads, :n], layer.pos[:, heads, :n], window)


def _static_attention(cache, module, query, key, value, scaling):
    """A fixed-shape step (traceable: no host values): the layer's whole buffer under its table's mask."""
    layer = cache.layers[module.layer_idx]
    lq = query.shape[2]
    if cache.collecting(layer.index):
        table = layer.table
        slots = table.slot_start + torch.arange(lq, device=query.device)
        _observe_slice(cache, layer, query, table.pos[:, 0].index_select(1, slots),
                       table.valid[:, 0].index_select(1, slots))
    # A decode step's mask is the slots' validity, read after update marked the new slot.
    mask = layer.table.valid[:, :, None, :] if lq == 1 else layer.table.masks[lq]
    return per_head_masked_attention(query, key, value, scaling, mask)


def _observe(cache, layer, query, start: int) -> None:
    """Pre-RoPE queries of this step into the online statistics, a slice of tokens at a time."""
    lq = query.shape[2]
    for t0 in range(0, lq, OBSERVE_TOKENS):
        t1 = min(lq, t0 + OBSERVE_TOKENS)
        _observe_slice(cache, layer, query[:, :, t0:t1], layer.pos[:, 0, start + t0:start + t1],
                       layer.valid[:, 0, start + t0:start + t1])


def _observe_slice(cache, layer, query, pos: torch.Tensor, valid: torch.Tensor) -> None:
    """Queries ``[B, Hq, T, D]`` at RoPE positions ``pos [B, T]`` (``valid`` False for padding), RoPE undone."""
    rope = layer.plan.rope
    q_pre = inverse_rope(query, rope.omega.to(query.device), pos.clamp_min(0)[:, None, :], rope.scale,
                         style=rope.style, rotary_dim=rope.rotary_dim)
    cache.online.observe(layer.index, q_pre, valid.float())


def _plain_attention(query, key, value, attention_mask, scaling, window):
    """Any other cache (or none): physical slots are the last ``N`` logical positions."""
    b, n = query.shape[0], key.shape[2]
    if attention_mask is None and not window:
        return causal_attention(query, key, value, scaling)
    if attention_mask is not None and attention_mask.dim() == 4:  # a prepared mask from another mask function
        mask = attend_somewhere(attention_mask[:, :, :, -n:].bool())
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                                               enable_gqa=query.shape[1] != key.shape[1])
        return out.transpose(1, 2).contiguous(), None
    valid = torch.ones(b, 1, n, dtype=torch.bool, device=query.device)
    if attention_mask is not None:
        valid = attention_mask[:, None, -n:].bool()
    positions = torch.arange(n, device=query.device).expand(b, 1, n)
    return masked_attention(query, key, value, scaling, valid, positions, window)
