"""Pure-torch reference of the four compiled ops (contract: ``kernel_src/OPS.md``).

The compiled CPU/CUDA kernels must reproduce these; :mod:`._dispatch` falls back to them when no
compiled library is loaded. All arithmetic is fp32 whatever the cache dtype.
"""
from typing import Sequence

import torch

from .rope import pair_views


def score_keys(
    keys: torch.Tensor,
    trig_weights: torch.Tensor,
    norm_weights: torch.Tensor,
    rotary_dim: int,
    interleaved: bool,
) -> torch.Tensor:
    """``out[b,h,n] = max_o <k[b,h/G,n], W[b,h,o]> + sum_f c[b,h,f] |k_f|``.

    Args:
        keys: post-RoPE keys ``[B, Hkv, N, D]`` (any float dtype, any strides).
        trig_weights: ``[B, Hq, O, D]`` float32 (O = 1 when the offset mean is folded in).
        norm_weights: ``[B, Hq, rotary_dim // 2]`` float32.
    Returns:
        ``[B, Hq, N]`` float32 scores.
    """
    batch, hkv, n, d = keys.shape
    hq, n_off = trig_weights.shape[1], trig_weights.shape[2]
    group = hq // hkv
    k = keys.float()
    w = trig_weights.float().view(batch, hkv, group * n_off, d)
    trig = torch.matmul(k, w.transpose(-1, -2))  # [B, Hkv, N, G*O]
    trig = trig.view(batch, hkv, n, group, n_off).amax(dim=-1)
    re, im = pair_views(k, rotary_dim, "interleaved" if interleaved else "half")
    mag = torch.sqrt(re * re + im * im)  # [B, Hkv, N, F]
    c = norm_weights.float().view(batch, hkv, group, -1)
    norm = torch.matmul(mag, c.transpose(-1, -2))  # [B, Hkv, N, G]
    return (trig + norm).permute(0, 1, 3, 2).reshape(batch, hq, n)


def zscore_group_reduce(
    scores: torch.Tensor, candidates: torch.Tensor, group_size: int, use_max: bool
) -> torch.Tensor:
    """Per-query-head z-score over candidate keys, then max (or mean) over each GQA group.

    Args:
        scores: ``[B, Hq, N]`` float32.
        candidates: ``[B, N]`` bool; non-candidates get ``-inf`` in the output.
    Returns:
        ``[B, Hq // group_size, N]`` float32.
    """
    batch, hq, n = scores.shape
    cand = candidates.view(batch, 1, n)
    s = scores.float()
    count = cand.sum(-1, keepdim=True).clamp_min(1).float()
    mean = torch.where(cand, s, 0.0).sum(-1, keepdim=True) / count
    var = (torch.where(cand, s - mean, 0.0) ** 2).sum(-1, keepdim=True) / count
    z = (s - mean) / var.sqrt().clamp_min(1e-6)
    z = z.view(batch, hq // group_size, group_size, n)
    out = z.amax(dim=2) if use_max else z.mean(dim=2)
    return out.masked_fill(~cand, float("-inf"))


def select_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores per row ``[R, N] -> [R, k]``; ties to the lower index; ascending."""
    order = torch.sort(scores.float(), dim=-1, descending=True, stable=True).indices[:, :k]
    return torch.sort(order, dim=-1).values


def compact_(caches: Sequence[torch.Tensor], indices: torch.Tensor) -> None:
    """In place ``cache[b,h,j] = cache[b,h,indices[b,h,j]]`` for ``j < K`` on every cache ``[B, H, C, D]``."""
    k = indices.shape[-1]
    for cache in caches:
        idx = indices.to(cache.device).unsqueeze(-1).expand(-1, -1, -1, cache.shape[-1])
        cache[:, :, :k].copy_(torch.gather(cache, 2, idx))
