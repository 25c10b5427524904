"""StreamingLLM (Xiao et al., arXiv:2309.17453): attention sinks plus the most recent tokens."""
from .base import Scorer, masked


class StreamingLLMScorer(Scorer):
    """Score = RoPE position, so the newest keys win every round; the sinks (``sink_tokens``, 4 in the paper)
    come from the cache's protection (the registry's ``streamingllm`` sets them)."""

    name = "streamingllm"

    def score(self, view, ops):
        return masked(view.positions.float(), view)
