"""Settings of a TriAttention cache, validated on construction."""
from dataclasses import asdict, dataclass
from triattention.reference import AGGREGATIONS
from triattention.selection import GRANULARITIES, GROUP_AGGREGATIONS, LAYER_AGGREGATIONS


SCORE_NORMALIZATIONS = ("zscore", "softmax")


@dataclass
class TriAttentionConfig:
    """How and when the cache is compacted.

    Args:
        budget: tokens each pruned layer keeps per row and KV head after a round (prompt included).
        interval: slack; a round runs once a row holds ``budget + interval`` tokens (paper: 128).
        pin_prompt: keep every prompt token (paper default). When the prompt leaves no room
            (``prompt + recent_window >= budget``) prompt tokens compete instead, with a warning.
        sink_tokens: first tokens of each row always kept (StreamingLLM sinks; paper: 0).
        recent_window: last tokens of each row always kept (paper: 0).
        granularity: ``per_head`` (paper), ``per_layer_head`` or ``union``.
        aggregation: ``mean`` or ``max`` over the future offsets.
        group_aggregation: ``max`` (paper) or ``mean`` over the query heads of a KV head.
        offset_max_length: largest future offset, offsets are 1, 2, 4, ... (paper: 65536).
        disable_mlr, disable_trig: the paper's ablations.
        normalize_scores: per-query-head normalisation before aggregation (paper: on).
        score_normalization: with ``normalize_scores``, ``zscore`` (paper) or ``softmax``: each query head's
            scores become its expected attention shares (softmax over the candidates of score / sqrt(D)), so
            the GQA-group and layer aggregations add attention mass instead of standardised logits.
        layer_aggregation: ``mean`` (paper) or ``max`` over layers for the shared granularities.
        score_layer_stride: score only every ``k``-th pruned layer (``k // 2``, ``k // 2 + k``, ...) and share
            the decision with all of them; cuts the keys read per round ``k``-fold. Needs a shared
            granularity (``per_head`` or ``union``).
        position_segments: ``S > 1`` cuts the candidates' position range into ``S`` equal segments and makes
            every segment keep the same fraction of its candidates (each by its own score order).
        online_refresh: online statistics keep absorbing every query (not only the prompt's).
        online_decay: with ``online_refresh``, older queries' weight is multiplied by this after every round
            (1.0 = cumulative mean; < 1 follows recent queries).
        online_weight: with an offline file, weight of the online statistics mixed into it (0 = offline only,
            1 = online only); online statistics are then collected as without a file.
        layer_budget_slope: ``s`` in (-1, 1): pruned layer ``l`` of ``L`` keeps ``budget * (1 + s (1 - 2l/(L-1)))``
            tokens (``s > 0``: more in lower layers, PyramidKV-like), the mean stays ``budget``. Layers keep nested
            prefixes of one shared ranking (scores merged by RoPE position), so it needs ``per_head``.
    """

    budget: int = 2048
    interval: int = 128
    pin_prompt: bool = True
    sink_tokens: int = 0
    recent_window: int = 0
    granularity: str = "per_head"
    aggregation: str = "mean"
    group_aggregation: str = "max"
    offset_max_length: int = 65536
    disable_mlr: bool = False
    disable_trig: bool = False
    normalize_scores: bool = True
    score_normalization: str = "zscore"
    layer_aggregation: str = "mean"
    score_layer_stride: int = 1
    position_segments: int = 0
    online_refresh: bool = False
    online_decay: float = 1.0
    online_weight: float = 0.0
    layer_budget_slope: float = 0.0

    def __post_init__(self):
        for name in ("budget", "interval", "offset_max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("sink_tokens", "recent_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.sink_tokens + self.recent_window >= self.budget:
            raise ValueError(
                f"budget ({self.budget}) must exceed the protected tokens: sink_tokens ({self.sink_tokens}) + "
                f"recent_window ({self.recent_window}) = {self.sink_tokens + self.recent_window}"
            )
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.group_aggregation not in GROUP_AGGREGATIONS:
            raise ValueError(f"group_aggregation must be one of {GROUP_AGGREGATIONS}, got {self.group_aggregation!r}")

        if self.score_normalization not in SCORE_NORMALIZATIONS:
            raise ValueError(f"score_normalization must be one of {SCORE_NORMALIZATIONS}, "
                             f"got {self.score_normalization!r}")
        if self.layer_aggregation not in LAYER_AGGREGATIONS:
            raise ValueError(f"layer_aggregation must be one of {LAYER_AGGREGATIONS}, got {self.layer_aggregation!r}")
        for name in ("score_layer_stride", "position_segments"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "score_layer_stride" else 0):
                raise ValueError(f"{name} must be a {'positive' if name == 'score_layer_stride' else 'non-negative'} "
                                 f"integer, got {value!r}")
        if self.score_layer_stride > 1 and self.granularity == "per_layer_head":
            raise ValueError("score_layer_stride > 1 shares one decision across layers: it needs granularity "
                             "'per_head' or 'union', not 'per_layer_head'")
        if not 0.0 < float(self.online_decay) <= 1.0:
            raise ValueError(f"online_decay must be in (0, 1], got {self.online_decay!r}")
        if not 0.0 <= float(self.online_weight) <= 1.0:
            raise ValueError(f"online_weight must be in [0, 1], got {self.online_weight!r}")
        if not -1.0 < float(self.layer_budget_slope) < 1.0:
            raise ValueError(f"layer_budget_slope must be in (-1, 1), got {self.layer_budget_slope!r}")
        if self.layer_budget_slope and (self.granularity != "per_head" or self.layer_aggregation != "mean"):
            raise ValueError("layer_budget_slope keeps nested prefixes of one shared ranking: it needs "
                             "granularity 'per_head' with layer_aggregation 'mean'")
        if self.online_decay != 1.0 and not self.online_refresh:
            raise ValueError("online_decay only acts with online_refresh=True")

    def layer_budgets(self, n_layers: int) -> list:
        """Budget of each of ``n_layers`` pruned layers (all ``budget`` unless ``layer_budget_slope``)."""
        if not self.layer_budget_slope or n_layers < 2:
            return [self.budget] * n_layers
        floor = self.sink_tokens + self.recent_window + 1
        return [max(floor, int(round(self.budget * (1 + self.layer_budget_slope * (1 - 2 * i / (n_layers - 1))))))
                for i in range(n_layers)]

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # The authors' configuration for the paper runs.
    "paper": dict(),
    # Chosen on a development segment of the essays (tokens 16384..20480) by scripts/explore_policies.sh and
    # confirmed on two held-out texts (docs/EVALUATION.md): the paper's scoring, with online statistics
    # (no file: the cache calibrates on the prompt) and every 4th layer scored — no scoring change beat the
    # paper's beyond noise, and the stride cuts a round's key reads 4x at no measurable quality cost.
    "recommended": dict(score_layer_stride=4),
    # Best measured quality when scoring cost does not matter (every layer scored): per-layer budgets that give
    # the upper layers more (same total). Chosen on the development segment, confirmed on both held-out texts.
    "quality": dict(layer_budget_slope=-0.5),
}


def preset(name: str, **overrides) -> TriAttentionConfig:
    """A named configuration (``paper``, ``recommended`` or ``quality``) with optional overrides.

    ``recommended`` and ``quality`` were measured with online statistics: pass no calibration file."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return TriAttentionConfig(**{**PRESETS[name], **overrides})
