"""The compacting cache: storage (:mod:`.layer`, :mod:`.layout`), hooks and trigger (:mod:`.cache`), the round
(:mod:`.rounds`) and what the scorer needs recorded (:mod:`.statistics`)."""
from .cache import TriAttentionCache, active_cache, scored_layer_ids
from .layer import TriAttentionLayer

__all__ = ["TriAttentionCache", "TriAttentionLayer", "active_cache", "scored_layer_ids"]
