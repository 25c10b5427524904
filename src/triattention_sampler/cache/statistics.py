"""What the cache records for its scorer besides K/V: online query statistics and recent queries.

Online statistics are the pre-RoPE query means of each row's prompt: a row keeps collecting until its first round
after the prompt (per row, so a batched row gets the statistics it would get alone). Only the layers whose scores
decide rounds collect.
"""
from typing import Dict, Iterable, List, Optional

import torch

from triattention import QueryFrequencyStats

from ..model_info import ModelInfo
from ..scorers.base import RecentQueries


class OnlineStatistics:
    """Running pre-RoPE query sums per collecting layer (``rows`` = batch rows)."""

    def __init__(self, info: ModelInfo, layer_ids: Iterable[int]):
        self.info = info
        self.layer_ids = set(layer_ids)
        self.reset()

    def reset(self) -> None:
        self.accumulators: Dict[int, QueryFrequencyStats] = {}
        self.rows_done: Optional[List[bool]] = None  # per row: stopped collecting (first round after its prompt)

    @property
    def collecting(self) -> bool:
        return self.rows_done is None or not all(self.rows_done)

    def wants(self, layer_idx: int) -> bool:
        return layer_idx in self.layer_ids and self.collecting

    def observe(self, layer_idx: int, queries_pre_rope: torch.Tensor, weights: torch.Tensor) -> None:
        """Add pre-RoPE queries ``[B, Hq, T, D]`` of one layer; ``weights [B, T]`` (0 for padding)."""
        stats = self.accumulators.get(layer_idx)
        if stats is None:
            rope = self.info.plans[layer_idx].rope
            stats = QueryFrequencyStats(queries_pre_rope.shape[0], 1, self.info.num_heads, self.info.head_dim,
                                        rope.rotary_dim, style=rope.style, device=queries_pre_rope.device)
            self.accumulators[layer_idx] = stats
        if self.rows_done is not None:
            active = torch.tensor([not done for done in self.rows_done], device=weights.device)
            weights = weights * active[:, None]
        stats.update(0, queries_pre_rope, weights)

    def finish_rows(self, rows: List[bool]) -> None:
        """Rows that went through a round after their prompt stop collecting."""
        if self.rows_done is None:
            self.rows_done = [False] * len(rows)
        self.rows_done = [done or r for done, r in zip(self.rows_done, rows)]

    def means(self, layer_idx: int, device: torch.device) -> Optional[Dict[str, torch.Tensor]]:
        """``q_mean_real``, ``q_mean_imag``, ``q_abs_mean`` ``[B, Hq, F]`` and ``q_pass_mean`` so far."""
        stats = self.accumulators.get(layer_idx)
        if stats is None:
            return None
        return {k: v[:, 0].to(device) for k, v in stats.means().items()}

    def select_rows(self, rows: List[int]) -> None:
        index = torch.tensor(rows)
        for stats in self.accumulators.values():
            for name in ("sum_real", "sum_imag", "sum_abs", "sum_pass", "count"):
                setattr(stats, name, getattr(stats, name).index_select(0, index.to(stats.count.device)))
        if self.rows_done is not None:
            self.rows_done = [self.rows_done[i] for i in rows]


class QueryWindow:
    """The last ``size`` post-RoPE queries of each recorded layer (for attention-based scorers such as SnapKV)."""

    def __init__(self, size: int):
        self.size = size
        self.recorded: Dict[int, RecentQueries] = {}

    def record(self, layer_idx: int, query: torch.Tensor, positions: torch.Tensor, scaling) -> None:
        """``query [B, Hq, Lq, D]``, ``positions [B, Lq]`` (-1 for padding)."""
        w = self.size
        prev = self.recorded.get(layer_idx)
        q, p = query.detach()[:, :, -w:], positions[:, -w:]
        if prev is not None and q.shape[2] < w:
            q = torch.cat([prev.queries, q], dim=2)[:, :, -w:]
            p = torch.cat([prev.positions, p], dim=1)[:, -w:]
        self.recorded[layer_idx] = RecentQueries(q.clone(), p.clone(), scaling)

    def get(self, layer_idx: int) -> Optional[RecentQueries]:
        return self.recorded.get(layer_idx)

    def reset(self) -> None:
        self.recorded.clear()
