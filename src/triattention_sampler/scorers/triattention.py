"""TriAttention (arXiv:2604.04921): the trigonometric distance preference of the calibrated query centres plus a
norm term, averaged over geometric future offsets, z-scored per query head and reduced over each GQA group."""
from typing import Dict, List, Tuple

import torch

from .base import LayerView, Scorer

AGGREGATIONS = ("mean", "max")
GROUP_AGGREGATIONS = ("max", "mean")
OFFSETS = ("geometric", "linear")


class TriAttentionScorer(Scorer):
    """Scores post-RoPE keys by phase cancellation (no RoPE inversion): one ``round_weights`` call per round for
    all scored layers that share a device, a RoPE and a length, then one fused scoring pass per layer.

    Args:
        aggregation: ``mean`` (paper) or ``max`` over the future offsets.
        group_aggregation: ``max`` (paper) or ``mean`` over the query heads of a KV head.
        offset_max_length: largest future offset; offsets are 1, 2, 4, ... (paper: 65536).
        normalize_scores: z-score each query head over the candidates before the group reduction (paper: on).
        disable_mlr, disable_trig: the paper's ablations (``E|q|`` instead of ``E|q| - |E q|``; no trig term).
        disable_norm: drop the norm term entirely (trig term only).
        offsets: ``geometric`` (paper) or ``linear`` (every distance 1..``offset_max_length``; needs ``mean``).
    """

    name = "triattention"
    needs_statistics = True

    def __init__(self, aggregation: str = "mean", group_aggregation: str = "max", offset_max_length: int = 65536,
                 normalize_scores: bool = True, disable_mlr: bool = False, disable_trig: bool = False,
                 disable_norm: bool = False, offsets: str = "geometric"):
        for name, value, allowed in (("aggregation", aggregation, AGGREGATIONS),
                                     ("group_aggregation", group_aggregation, GROUP_AGGREGATIONS),
                                     ("offsets", offsets, OFFSETS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name, value in (("normalize_scores", normalize_scores), ("disable_mlr", disable_mlr),
                            ("disable_trig", disable_trig), ("disable_norm", disable_norm)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
        if isinstance(offset_max_length, bool) or not isinstance(offset_max_length, int) or offset_max_length < 1:
            raise ValueError(f"offset_max_length must be a positive integer, got {offset_max_length!r}")
        if offsets == "linear" and aggregation != "mean":
            raise ValueError("linear offsets need aggregation='mean'")
        self.aggregation, self.group_aggregation = aggregation, group_aggregation
        self.offset_max_length, self.normalize_scores = offset_max_length, normalize_scores
        self.disable_mlr, self.disable_trig, self.disable_norm, self.offsets = (disable_mlr, disable_trig,
                                                                              disable_norm, offsets)
        self._same_rotation: Dict[Tuple[int, int], bool] = {}

    def future_offsets(self, ops, device) -> torch.Tensor:
        if self.offsets == "linear":
            return torch.arange(1, self.offset_max_length + 1, device=device, dtype=torch.float32)
        return ops.build_geometric_offsets(self.offset_max_length, device)

    def score(self, view, ops):
        return self.score_layers([view], ops)[0]

    def score_layers(self, views: List[LayerView], ops) -> List[torch.Tensor]:
        """Layers that share a device, a RoPE and a length are scored together: one ``round_weights`` call for
        all of them (statistics stacked along the batch axis) and one normalisation, so a round's fixed cost does
        not grow with the number of scored layers (it dominated the round on CPU)."""
        groups: List[List[int]] = []
        for j, view in enumerate(views):
            for members in groups:
                head = views[members[0]]
                if (head.keys.device == view.keys.device and head.keys.shape[2] == view.keys.shape[2]
                        and self._rotates_alike(head, view)):
                    members.append(j)
                    break
            else:
                groups.append([j])
        out: Dict[int, torch.Tensor] = {}
        for members in groups:
            out.update(zip(members, self._score_group([views[j] for j in members], ops)))
        return [out[j] for j in range(len(views))]

    def _rotates_alike(self, a: LayerView, b: LayerView) -> bool:
        if a.rope is b.rope:
            return True
        key = (id(a.rope), id(b.rope))
        if key not in self._same_rotation:  # an allclose per pair and round cost ~0.3 ms on CPU
            self._same_rotation[key] = a.rope.same_rotation(b.rope)
        return self._same_rotation[key]

    def _score_group(self, views: List[LayerView], ops) -> List[torch.Tensor]:
        first = views[0]
        rope, dev = first.rope, first.keys.device
        b, hkv = first.keys.shape[:2]
        n_layers = len(views)

        def stacked(name):  # [L * B, Hq, F] (offline statistics [Hq, F] are shared by the rows)
            if first.statistics.get(name) is None:
                return None
            return torch.cat([v.statistics[name].to(dev).expand(b, *v.statistics[name].shape[-2:]) for v in views])

        w, c = ops.round_weights(
            stacked("q_mean_real"), stacked("q_mean_imag"), stacked("q_abs_mean"), rope.omega.to(dev),
            first.round_start.to(dev).repeat(n_layers), self.future_offsets(ops, dev), head_dim=rope.head_dim,
            style=rope.style, rotary_dim=rope.rotary_dim, aggregation=self.aggregation,
            freq_scale_sq=rope.freq_scale_sq(dev), q_pass_mean=stacked("q_pass_mean"), disable_mlr=self.disable_mlr,
            disable_trig=self.disable_trig,
        )
        if self.disable_norm:
            c = torch.zeros_like(c)
        scores = torch.cat([
            ops.score_post_rope_keys(v.keys, w[j * b:(j + 1) * b], c[j * b:(j + 1) * b], style=rope.style,
                                     rotary_dim=rope.rotary_dim)
            for j, v in enumerate(views)])  # [L * B, Hq, N]
        candidates = torch.cat([v.candidates.to(dev) for v in views])  # [L * B, Hkv, N]
        if self.normalize_scores:
            reduced = ops.reduce_query_heads(scores, candidates, group_aggregation=self.group_aggregation)
        else:
            grouped = scores.view(scores.shape[0], hkv, -1, scores.shape[-1])
            reduced = grouped.amax(2) if self.group_aggregation == "max" else grouped.mean(2)
            reduced = reduced.masked_fill(~candidates, float("-inf"))
        return list(reduced.split(b))
