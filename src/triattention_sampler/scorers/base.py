"""What a scorer sees and returns.

A round asks the scorer for one score per cached slot of each scored layer (higher = keep; ``-inf`` for slots
that are not candidates). Protection (sinks, pinned prompt, recent window), the combination across layers,
exact top-k and compaction belong to the cache, so a scorer is only its scoring rule (kvpress presses are the
model). To add one: a class in a new file of this package and one line in :mod:`.registry`.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from ..rope_probe import RopeSpec


@dataclass
class RecentQueries:
    """The last ``W`` post-RoPE queries of a layer: ``queries [B, Hq, W, D]``, their RoPE ``positions [B, W]``
    (-1 for padding) and the attention ``scaling`` the model used."""

    queries: torch.Tensor
    positions: torch.Tensor
    scaling: Optional[float]


@dataclass
class LayerView:
    """One pruned layer at round time: everything a scorer may read (``B`` rows, ``H`` KV heads, ``N`` slots).

    Attributes:
        index: the layer's index in the model.
        keys: ``[B, H, N, D]`` post-RoPE cached keys (a view of the cache: do not write).
        valid: ``[B, H, N]`` bool, slots that hold a real token (not padding or filler).
        candidates: ``[B, H, N]`` bool, slots that compete (real tokens, not protected); others must score ``-inf``.
        positions: ``[B, H, N]`` int64 RoPE position of each slot (-1 where no token is held).
        round_start: ``[B]`` int64, the RoPE position the next token of each row gets.
        rope: the layer's RoPE (angular rates, pairing, scaling).
        statistics: pre-RoPE query statistics (``q_mean_real``, ``q_mean_imag``, ``q_abs_mean`` ``[Hq, F]`` or
            ``[B, Hq, F]``, ``q_pass_mean`` or None) for scorers with ``needs_statistics``.
        queries: recent queries for scorers with ``query_window > 0`` (None until some were seen).
    """

    index: int
    keys: torch.Tensor
    valid: torch.Tensor
    candidates: torch.Tensor
    positions: torch.Tensor
    round_start: torch.Tensor
    rope: RopeSpec
    statistics: Optional[Dict[str, Optional[torch.Tensor]]] = None
    queries: Optional[RecentQueries] = None


class Scorer:
    """Base class: ``score`` one layer; ``score_layers`` may batch several (TriAttention does).

    Class attributes declare what the cache must provide: ``needs_statistics`` (query statistics: an offline
    file, else collected online from the prompt) and ``query_window`` (how many recent queries to record)."""

    name = "scorer"
    needs_statistics = False
    query_window = 0

    def score(self, view: LayerView, ops) -> torch.Tensor:
        """``[B, H, N]`` float scores for one layer (``ops``: the triattention kernel module)."""
        raise NotImplementedError

    def score_layers(self, views: List[LayerView], ops) -> List[torch.Tensor]:
        return [self.score(view, ops) for view in views]

    def __repr__(self) -> str:
        params = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in params.items())})"


def masked(scores: torch.Tensor, view: LayerView) -> torch.Tensor:
    """``scores`` with every non-candidate slot at ``-inf``."""
    return scores.masked_fill(~view.candidates, float("-inf"))
