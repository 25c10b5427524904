"""Scaled dot-product attention with grouped-query heads, and the boolean masks the compacted cache needs."""
from typing import Optional

import torch
import torch.nn.functional as F


def sdpa_grouped(query, key, value, mask: Optional[torch.Tensor], scaling: Optional[float], causal: bool):
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


def build_mask(valid, kpos, qpos, lq: int, window: Optional[int]):
    """``valid [B, H, N]``, positions ``kpos [B, H, N]``, ``qpos [B, H, Lq]`` -> bool ``[B, H, Lq, N]``."""
    n = valid.shape[-1]
    causal = torch.ones(lq, n, dtype=torch.bool, device=valid.device).tril(n - lq)
    mask = valid[:, :, None, :] & causal
    if window:
        mask &= kpos[:, :, None, :] > qpos[..., None] - window
    # Queries that see nothing (padding positions) attend everywhere: their output is never used,
    # but a NaN would leak into later layers through masked-but-multiplied values.
    return mask | ~mask.any(-1, keepdim=True)
