"""One round: protection -> scores -> selection -> compaction, for every pruned layout at once.

Each pruned :class:`~.layout.Layout` keeps ``min(real, budget)`` tokens per triggered row (other rows keep all).
Scores of the scored layers are combined into one ranking per layout: the mean over layers (``per_head``) or the
max over layers and KV heads (``union``) when all pruned layers share one layout, the layer's own scores
(``per_layer_head``), and, when layouts differ (per-layer budgets), the mean over the scored layers that still hold
a key at that RoPE position — the same mean, indexed by position instead of slot. Then exact top-k with protected
tokens forced in, and one in-place gather of every member layer's K/V per device.
"""
import logging
import time
from typing import Dict, List

import torch

from ..scorers.base import LayerView
from .layout import Layout

logger = logging.getLogger(__name__)


def protected_slots(cache, layout: Layout, table) -> torch.Tensor:
    """``[B, H, N]`` bool on ``table``'s device: sinks, the recent window and (when it leaves room) the pinned
    prompt."""
    cfg, n = cache.config, layout.length
    device = table.pos.device
    pos, valid = table.pos[:, :, :n], table.valid[:, :, :n]
    protected = pos < cfg.sink_tokens
    if cfg.recent_window:
        protected |= pos >= (table.next_pos - cfg.recent_window)[:, None, None]
    if cfg.pin_prompt and cache.prompt_lengths is not None:
        pinnable = [p + cfg.recent_window < layout.budget for p in cache.prompt_lengths]
        if not all(pinnable) and not cache.warned_prompt:
            logger.warning(
                "prompt of %s tokens leaves no room in budget %d: its tokens compete for the budget instead "
                "of being pinned (so generated tokens are not all evicted)", cache.prompt_lengths, layout.budget)
            cache.warned_prompt = True
        limit = torch.tensor([p if ok else 0 for p, ok in zip(cache.prompt_lengths, pinnable)], device=device)
        protected |= pos < limit[:, None, None]
    return protected & valid


def layer_view(cache, idx: int, protected: torch.Tensor) -> LayerView:
    """What the scorer may see of pruned layer ``idx`` (``protected`` on any device)."""
    layer = cache.layers[idx]
    n = layer.length
    valid = layer.valid[:, :, :n]
    scorer = cache.scorer
    return LayerView(
        index=idx, keys=layer.keys[:, :, :n], valid=valid, candidates=valid & ~protected.to(valid.device),
        positions=layer.pos[:, :, :n], round_start=layer.next_pos, rope=layer.plan.rope,
        statistics=cache.statistics_for(idx, layer.keys.device) if scorer.needs_statistics else None,
        queries=cache.query_window.get(idx) if cache.query_window is not None else None)


def home_table(cache, layout: Layout):
    """The layout's table on its leader layer's device."""
    return layout.tables[cache.layers[layout.leader].keys.device]


def _merge_by_position(cache, scores: List[torch.Tensor], scored: List[int], layouts: List[Layout]) -> dict:
    """Per layout: the mean of the scored layers' finite scores at each slot's RoPE position (-1e30 where no
    scored layer holds that position any more)."""
    table = home_table(cache, layouts[0])
    dev = table.pos.device
    b, h = table.pos.shape[:2]
    span = max(layouts[0].seen)
    total = torch.zeros(b, h, span, device=dev)
    count = torch.zeros(b, h, span, device=dev)
    for i, s in zip(scored, scores):
        layer = cache.layers[i]
        where = layer.pos[:, :, :layer.length].to(dev).clamp_min(0)
        s = s.to(dev)
        ok = torch.isfinite(s)
        total.scatter_add_(2, where, torch.where(ok, s, 0.0))
        count.scatter_add_(2, where, ok.float())
    ranking = {}
    for k, layout in enumerate(layouts):
        where = home_table(cache, layout).pos[:, :, :layout.length].to(dev).clamp_min(0)
        seen = count.gather(2, where)
        ranking[k] = torch.where(seen > 0, total.gather(2, where) / seen.clamp_min(1), -1e30)
    return ranking


@torch.no_grad()
def run_round(cache, trigger: List[bool]) -> None:
    """Bring every triggered row of every pruned layout back to its budget."""
    cfg, ops = cache.config, cache.ops
    layouts = cache.pruned_layouts
    started = time.perf_counter()
    protected: Dict[int, torch.Tensor] = {}
    for k, layout in enumerate(layouts):  # on the device of the layout's leader layer
        protected[k] = protected_slots(cache, layout, home_table(cache, layout))
    of_layer = {i: k for k, layout in enumerate(layouts) for i in layout.layer_ids}
    scored = cache.scored_layers()
    score_start = time.perf_counter()
    scores = cache.scorer.score_layers([layer_view(cache, i, protected[of_layer[i]]) for i in scored], ops)
    if cfg.granularity == "per_layer_head":
        ranking = {of_layer[i]: s for i, s in zip(scored, scores)}
    elif len(layouts) == 1:
        ranking = {0: ops.combine_layers(scores, cfg.granularity)[0]}
    else:
        ranking = _merge_by_position(cache, scores, scored, layouts)
    cache.score_seconds += time.perf_counter() - score_start
    trigger_layout = cache.trigger_layout
    evicted = 0
    for k, layout in enumerate(layouts):
        keep = [min(r, layout.budget) if t else r for r, t in zip(layout.real, trigger)]
        if keep == layout.real and len(layouts) > 1:
            continue  # a layout with a larger budget that is not full yet
        if layout is trigger_layout:
            evicted = sum(r - c for r, c in zip(layout.real, keep))
        scores_k = ranking[k]
        dev = scores_k.device
        valid = home_table(cache, layout).valid[:, :, :layout.length].to(dev)
        idx, keep_valid = ops.select_keep_indices(scores_k, valid, torch.tensor(keep, device=dev), max(keep),
                                                  protected[k].to(dev))
        apply_selection(cache, layout, idx, keep_valid, keep)
    cache.finish_round(trigger, evicted)
    cache.compact_seconds += time.perf_counter() - started


def apply_selection(cache, layout: Layout, idx: torch.Tensor, keep_valid: torch.Tensor, keep: List[int]) -> None:
    """Gather the kept slots of every member layer to the front (one call per device), then give memory back:
    buffers larger than the layout's target are reallocated to it."""
    n, out_len = layout.length, idx.shape[-1]
    members: Dict[torch.device, List[torch.Tensor]] = {}
    for i in layout.layer_ids:
        layer = cache.layers[i]
        members.setdefault(layer.keys.device, []).extend([layer.keys, layer.values])
    for device, tensors in members.items():
        idx_d = idx.to(device)
        cache.ops.compact_(tensors, idx_d)
        layout.tables[device].gather(idx_d, keep_valid.to(device), n)
    layout.length, layout.real = out_len, list(keep)
    layout.all_valid = all(k == out_len for k in keep)
    layout.uniform_heads = layout.uniform_heads and layout.all_valid  # filler slots differ per KV head
    target = layout.capacity_target
    if target is not None and layout.capacity > target and out_len < target:
        layout.capacity = target
        for i in layout.layer_ids:
            cache.layers[i].shrink(target)
        for table in layout.tables.values():
            table.resize(target, out_len)
