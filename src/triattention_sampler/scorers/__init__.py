"""Key scorers (one small class per method, kvpress style) and the registry of method names."""
from .base import LayerView, RecentQueries, Scorer
from .knorm import KeyNormScorer
from .random_scorer import RandomScorer
from .registry import METHODS, Method, make_scorer, parse_method, resolve, split_methods
from .snapkv import SnapKVScorer
from .streamingllm import StreamingLLMScorer
from .triattention import TriAttentionScorer

__all__ = ["LayerView", "RecentQueries", "Scorer", "TriAttentionScorer", "StreamingLLMScorer", "RandomScorer",
           "KeyNormScorer", "SnapKVScorer", "METHODS", "Method", "make_scorer", "parse_method", "resolve",
           "split_methods"]
