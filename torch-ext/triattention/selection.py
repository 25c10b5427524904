"""From per-head scores to the keys each (row, layer, KV head) keeps.

Pipeline of one round: per-query-head z-score over the candidate keys -> max (or mean) over each GQA
group -> combine across layers by granularity -> protected tokens forced in -> exact top-k, ties to the
earlier key, kept indices in temporal order.
"""
from typing import List, Optional, Sequence, Tuple

import torch

from . import _dispatch

GRANULARITIES = ("per_head", "per_layer_head", "union")
GROUP_AGGREGATIONS = ("max", "mean")


def reduce_query_heads(
    scores: torch.Tensor, candidates: torch.Tensor, *, group_aggregation: str = "max"
) -> torch.Tensor:
    """z-score each query head over its candidates, then reduce each GQA group.

    Args:
        scores: ``[B, Hq, N]`` float32 scores of one layer.
        candidates: ``[B, Hkv, N]`` (or ``[B, N]``) bool: keys that compete (real, not protected).
    Returns:
        ``[B, Hkv, N]`` float32; non-candidates are ``-inf``.
    """
    if group_aggregation not in GROUP_AGGREGATIONS:
        raise ValueError(f"group_aggregation must be one of {GROUP_AGGREGATIONS}, got {group_aggregation!r}")
    if scores.dim() != 3:
        raise ValueError(f"scores must be [B, Hq, N], got shape {tuple(scores.shape)}")
    batch, hq, n = scores.shape
    if candidates.dim() == 2:
        candidates = candidates[:, None, :]
    hkv = candidates.shape[1]
    if candidates.shape[0] != batch or candidates.shape[2] != n or hq % hkv:
        raise ValueError(
            f"candidates {tuple(candidates.shape)} do not match scores {tuple(scores.shape)}"
        )
    if hkv == 1:
        return _dispatch.zscore_group_reduce(scores, candidates[:, 0], hq, group_aggregation == "max")
    group = hq // hkv
    # Candidates may differ per KV head (per-head compaction): fold KV heads into the batch dimension.
    out = _dispatch.zscore_group_reduce(
        scores.reshape(batch * hkv, group, n),
        candidates.expand(batch, hkv, n).reshape(batch * hkv, n),
        group,
        group_aggregation == "max",
    )
    return out.view(batch, hkv, n)


def combine_layers(per_layer: Sequence[torch.Tensor], granularity: str = "per_head") -> List[torch.Tensor]:
    """Turn per-layer ``[B, Hkv, N]`` scores into the scores each layer selects by.

    - ``per_head`` (paper default): mean over layers, one key set per KV
      head shared by all layers.
    - ``per_layer_head``: every (layer, KV head) selects on its own scores.
    - ``union``: max over layers and KV heads, one key set for the whole model.
    Layers may live on different devices; shared scores are reduced on the first layer's device.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if not per_layer:
        return []
    if granularity == "per_layer_head":
        return list(per_layer)
    home = per_layer[0].device
    stacked = torch.stack([s.to(home) for s in per_layer])  # [L, B, Hkv, N]
    if granularity == "per_head":
        shared = stacked.mean(dim=0)
    else:
        shared = stacked.amax(dim=(0, 2), keepdim=False)[:, None, :].expand_as(per_layer[0]).to(home)
    return [shared.to(s.device) for s in per_layer]


def select_keep_indices(
    scores: torch.Tensor,
    valid: torch.Tensor,
    keep_real: torch.Tensor,
    out_len: int,
    protected: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact keep sets: per row ``keep_real[b]`` real keys, padded to ``out_len`` slots.

    Args:
        scores: ``[B, H, N]`` float32 selection scores (``-inf`` for non-candidates).
        valid: ``[B, H, N]`` bool: slot holds a real token (not padding / filler).
        keep_real: ``[B]`` int: real keys to keep per row (``<=`` valid count of the row).
        out_len: slots per (row, head) after compaction (``>= max(keep_real)``).
        protected: ``[B, H, N]`` bool tokens kept before any scored one (sinks, pinned prompt, window).
    Returns:
        ``(indices [B, H, out_len] int64 ascending, keep_valid [B, H, out_len] bool)``. Rows that keep
        fewer real keys than ``out_len`` are filled with their earliest unselected slots, marked invalid.
    """
    if scores.dim() != 3 or valid.shape != scores.shape:
        raise ValueError(f"scores and valid must both be [B, H, N], got {tuple(scores.shape)}, {tuple(valid.shape)}")
    batch, heads, n = scores.shape
    if not 0 <= out_len <= n:
        raise ValueError(f"out_len must be in [0, {n}], got {out_len}")
    keep_real = torch.as_tensor(keep_real, device=scores.device).reshape(-1)
    if keep_real.shape[0] != batch:
        raise ValueError(f"keep_real must have one entry per row ({batch}), got {keep_real.shape[0]}")
    if bool((keep_real > out_len).any()) or bool((keep_real < 0).any()):
        raise ValueError(f"keep_real must be in [0, out_len={out_len}], got {keep_real.tolist()}")
    if bool((valid.sum(-1) < keep_real[:, None]).any()):
        raise ValueError("keep_real exceeds the number of real tokens in a row")
    priority = torch.where(valid, scores.float(), float("-inf"))
    if protected is not None:
        priority = torch.where(protected & valid, float("inf"), priority)
    # Finite-below-invalid ordering: real candidates with -inf z (none in practice) still beat padding.
    priority = torch.where(valid & torch.isneginf(priority), torch.finfo(torch.float32).min, priority)
    uniform = bool((keep_real == out_len).all())
    if uniform:
        idx = _dispatch.select_topk(priority.reshape(batch * heads, n), out_len).view(batch, heads, out_len)
        return idx, torch.gather(valid, 2, idx)
    order = torch.sort(priority, dim=-1, descending=True, stable=True).indices
    ranks = torch.arange(n, device=scores.device).expand(batch, heads, n)
    chosen = torch.zeros_like(valid).scatter(2, order, ranks < keep_real[:, None, None])
    idx = _dispatch.select_topk(chosen.float().reshape(batch * heads, n), out_len).view(batch, heads, out_len)
    return idx, torch.gather(chosen, 2, idx)


def compact_(caches: Sequence[torch.Tensor], indices: torch.Tensor) -> None:
    """Gather kept slots to the front of every ``[B, H, C, D]`` cache, in place (``indices[..., j] >= j``).

    One call covers all layers that share a keep set; all caches must be on ``indices``' device.
    """
    if indices.dim() != 3 or indices.dtype != torch.int64:
        raise ValueError(f"indices must be int64 [B, H, K], got {indices.dtype} {tuple(indices.shape)}")
    for i, cache in enumerate(caches):
        if cache.dim() != 4 or cache.shape[:2] != indices.shape[:2] or cache.shape[2] < indices.shape[2]:
            raise ValueError(f"cache {i} shape {tuple(cache.shape)} does not fit indices {tuple(indices.shape)}")
        if cache.device != indices.device:
            raise ValueError(f"cache {i} is on {cache.device} but indices are on {indices.device}")
    _dispatch.compact_(caches, indices)
