"""TriAttention: trigonometric KV cache compression (arXiv:2604.04921).

The seed API (``score_keys_for_round`` and friends) mirrors the authors' reference; the fast path
(``round_weights`` + ``score_post_rope_keys``), selection and compaction are what the runtime calls.
Compiled ops are used when this package was built by kernel-builder, the pure-torch reference otherwise.
"""
from . import reference_ops
from ._dispatch import backend_name, compiled_available
from .reference import (
    HeadFrequencyStats,
    build_geometric_offsets,
    compute_frequency_statistics_from_means,
    score_keys_for_round,
    select_keys_to_keep,
)
from .rope import apply_rope, invert_rope, inverse_rope, pair_slices, rotate_half, to_complex_pairs
from .scoring import round_tables, round_weights, score_post_rope_keys
from .selection import combine_layers, compact_, reduce_query_heads, select_keep_indices
from .stats import QueryFrequencyStats

__all__ = [
    # seed API
    "HeadFrequencyStats",
    "build_geometric_offsets",
    "compute_frequency_statistics_from_means",
    "invert_rope",
    "rotate_half",
    "score_keys_for_round",
    "select_keys_to_keep",
    "to_complex_pairs",
    # fast path, selection, compaction
    "round_tables",
    "round_weights",
    "score_post_rope_keys",
    "reduce_query_heads",
    "combine_layers",
    "select_keep_indices",
    "compact_",
    # RoPE helpers and statistics
    "apply_rope",
    "inverse_rope",
    "pair_slices",
    "QueryFrequencyStats",
    # backend
    "backend_name",
    "compiled_available",
    "reference_ops",
]
