"""Scaled dot-product attention over the compacted cache, without materialising what SDPA does not need.

Kept tokens stay in temporal order and new ones are appended, so causality over physical slots is "query ``i`` of
``Lq`` sees slots ``<= N - Lq + i``" (lower-right aligned). With nothing padded and no window that is SDPA's own
causal path (``is_causal`` for a prefill, ``causal_lower_right`` for a chunk after cached keys on CUDA) with native
GQA; otherwise boolean masks are built per query chunk, never ``[G * L, L]`` at once.
"""
from typing import Optional

import torch
import torch.nn.functional as F

MASK_ELEMENTS = 1 << 26  # boolean mask elements built at once (64 MiB)


def _out(attn: torch.Tensor) -> torch.Tensor:
    """``[B, Hq, Lq, D]`` -> ``[B, Lq, Hq, D]`` contiguous (what the attention modules reshape)."""
    return attn.transpose(1, 2).contiguous()


def _lower_right(lq: int, n: int, device, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
    """Rows ``start:stop`` of the ``[Lq, N]`` causal mask whose last query sees every slot: ``[stop - start, N]``."""
    queries = torch.arange(n - lq + start, n - lq + (lq if stop is None else stop), device=device)
    return torch.arange(n, device=device)[None, :] <= queries[:, None]


def attend_somewhere(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` with rows that see nothing (a padding position's query) opened everywhere: their output is never
    used, but a NaN would leak into later layers through masked-but-multiplied values."""
    return mask | ~mask.any(-1, keepdim=True)


def _folded(query, key, value, scaling: Optional[float], mask: torch.Tensor) -> torch.Tensor:
    """SDPA with one ``mask [B, Hkv, Lq, N]`` per KV head: a group's query heads folded into the query axis, so K/V
    are not repeated. Returns ``[B, Hq, Lq, Dv]``."""
    b, hq, lq, d = query.shape
    hkv, n = key.shape[1], key.shape[2]
    group = hq // hkv
    q = query.reshape(b, hkv, group * lq, d)
    if lq > 1:
        mask = mask[:, :, None].expand(b, hkv, group, lq, n).reshape(b, hkv, group * lq, n)
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(b, hq, lq, value.shape[-1])


def causal_attention(query, key, value, scaling: Optional[float]):
    """Every slot holds a real token: causal attention of ``query [B, Hq, Lq, D]`` over ``key/value
    [B, Hkv, N, D]`` (the last ``Lq`` slots are the queries' own tokens)."""
    lq, n = query.shape[2], key.shape[2]
    gqa = query.shape[1] != key.shape[1]
    if lq == 1 or lq == n:
        out = F.scaled_dot_product_attention(query, key, value, scale=scaling, is_causal=lq > 1, enable_gqa=gqa)
    elif query.is_cuda:
        from torch.nn.attention.bias import causal_lower_right

        out = F.scaled_dot_product_attention(query, key, value, attn_mask=causal_lower_right(lq, n), scale=scaling,
                                             enable_gqa=gqa)
    else:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=_lower_right(lq, n, query.device),
                                             scale=scaling, enable_gqa=gqa)
    return _out(out), None


def masked_attention(query, key, value, scaling: Optional[float], valid: torch.Tensor, positions: torch.Tensor,
                     window: Optional[int] = None):
    """Attention with slots that hold no token (``valid [B, H, N]`` False: padding, filler) and optional sliding
    windows by RoPE position (``positions [B, H, N]``); ``H`` is 1 (same slots in every KV head) or ``Hkv``.

    Queries are processed in chunks so the boolean mask stays under :data:`MASK_ELEMENTS`; per-KV-head masks fold
    the query heads of a group into the query axis (no K/V repeat)."""
    b, hq, lq = query.shape[:3]
    hkv, n = key.shape[1], key.shape[2]
    per_head = valid.shape[1] > 1
    group = hq // hkv
    rows = max(1, min(lq, MASK_ELEMENTS // max(1, b * (hq if per_head else 1) * n)))
    outs = []
    for start in range(0, lq, rows):
        stop = min(lq, start + rows)
        causal = _lower_right(lq, n, query.device, start, stop)  # [c, N]: only this chunk's rows
        mask = valid[:, :, None, :] & causal
        if window:
            qpos = positions[:, :, n - lq + start:n - lq + stop]
            mask = mask & (positions[:, :, None, :] > qpos[..., None] - window)
        mask = attend_somewhere(mask)
        q = query[:, :, start:stop]
        if per_head:
            outs.append(_folded(q, key, value, scaling, mask))
        else:
            outs.append(F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling,
                                                       enable_gqa=group > 1))
    return _out(outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)), None


def per_head_masked_attention(query, key, value, scaling: Optional[float], mask: torch.Tensor):
    """Attention with a ready ``mask [B, Hkv, Lq, N]`` bool (one per KV head): the query heads of a group are folded
    into the query axis, so K/V are not repeated (a static step: fixed shapes, no host values)."""
    return _out(_folded(query, key, value, scaling, mask)), None
