"""Settings of a TriAttention cache, validated on construction."""
from dataclasses import asdict, dataclass
from triattention.reference import AGGREGATIONS
from triattention.selection import GRANULARITIES, GROUP_AGGREGATIONS


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
        normalize_scores: per-query-head z-score before aggregation (paper: on).
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

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # The authors' configuration for the paper runs.
    "paper": dict(),
}


def preset(name: str, **overrides) -> TriAttentionConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return TriAttentionConfig(**{**PRESETS[name], **overrides})
