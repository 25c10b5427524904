"""A transformers ``Cache`` that compacts itself with TriAttention during generation.

Each layer stores keys/values in a preallocated buffer ``[B, Hkv, capacity, D]`` plus, per slot, whether
it holds a real token (``valid``: not padding, not filler) and its RoPE position (``pos``). The logical
length (what ``generate``, positions and masks see) is kept apart from the physical one. A round runs
at the start of a forward step (never during prefill) once some row holds ``budget + interval`` real
tokens and brings every such row back to ``budget``: scores from all pruned layers, one selection,
one in-place gather per layer on that layer's own device.
"""
import logging
import threading
import time
import weakref
from typing import Dict, List, Optional, Union

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .calibration import CalibrationStats
from .config import TriAttentionConfig
from .kernel_loading import load_ops
from .policies import TriAttentionPolicy
from .rope_spec import LayerPlan, ModelInfo, describe_model

logger = logging.getLogger(__name__)
_ACTIVE = threading.local()


def active_cache() -> Optional["TriAttentionCache"]:
    """The TriAttentionCache whose ``update`` ran last on this thread (what the attention function serves)."""
    ref = getattr(_ACTIVE, "cache", None)
    return ref() if ref is not None else None


class TriAttentionLayer(CacheLayerMixin):
    """Storage of one layer: K/V buffers, per-slot validity and RoPE position, per-row next position."""

    is_compileable = False
    is_croppable = False
    is_sliding = False

    def __init__(self, plan: LayerPlan, max_useful_capacity: Optional[int] = None):
        super().__init__()
        self.plan = plan
        # Growth stops here (budget + interval + 1 for pruned layers) unless a longer step needs more.
        self.max_useful_capacity = max_useful_capacity
        self.length = 0  # physical slots in use
        self.cumulative_length = 0  # logical tokens seen, padding included
        self.valid: Optional[torch.Tensor] = None  # [B, Hkv, C] bool
        self.pos: Optional[torch.Tensor] = None  # [B, Hkv, C] int64, RoPE position of each slot
        self.next_pos: Optional[torch.Tensor] = None  # [B] int64, next RoPE position per row
        self.all_valid = True  # host-side: no padding/filler slot held (lets attention skip the mask)
        self._last = (0, 0)  # (first slot, count) of the latest append

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, n, dim = key_states.shape
        self._allocate(batch, heads, n, dim, key_states, value_states.shape[-1])
        self.next_pos = torch.zeros(batch, dtype=torch.int64, device=key_states.device)
        self.is_initialized = True

    def _allocate(self, batch, heads, capacity, dim, like, value_dim):
        self.keys = like.new_empty(batch, heads, capacity, dim)
        self.values = like.new_empty(batch, heads, capacity, value_dim)
        self.valid = torch.zeros(batch, heads, capacity, dtype=torch.bool, device=like.device)
        self.pos = torch.full((batch, heads, capacity), -1, dtype=torch.int64, device=like.device)

    def _grow(self, needed: int) -> None:
        grown = int(self.keys.shape[2] * 1.5) + 16
        if self.max_useful_capacity is not None:
            grown = min(grown, self.max_useful_capacity)
        capacity = max(needed, grown)
        old = (self.keys, self.values, self.valid, self.pos)
        b, h, _, d = self.keys.shape
        self._allocate(b, h, capacity, d, self.keys, self.values.shape[-1])
        for new, prev in zip((self.keys, self.values, self.valid, self.pos), old):
            new[:, :, : self.length] = prev[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if key_states.device != self.keys.device:
            raise ValueError(
                f"layer cache lives on {self.keys.device} but new key states arrived on {key_states.device}"
            )
        n = key_states.shape[-2]
        if self.length + n > self.keys.shape[2]:
            self._grow(self.length + n)
        start, end = self.length, self.length + n
        self.keys[:, :, start:end] = key_states
        self.values[:, :, start:end] = value_states
        # Provisional metadata (no padding); the attention function corrects it for padded rows.
        steps = torch.arange(n, device=self.keys.device)
        self.valid[:, :, start:end] = True
        self.pos[:, :, start:end] = (self.next_pos[:, None] + steps)[:, None, :]
        self.next_pos += n
        self.length, self.cumulative_length, self._last = end, self.cumulative_length + n, (start, n)
        return self.keys[:, :, :end], self.values[:, :, :end]

    def mark_padding(self, new_valid: torch.Tensor) -> None:
        """Fix the latest append for padding: ``new_valid [B, n]`` True for real tokens."""
        start, n = self._last
        new_valid = new_valid.to(self.valid.device, torch.bool)
        if bool(new_valid.all()):
            return
        self.all_valid = False
        before = self.next_pos - n
        pos = before[:, None] + new_valid.long().cumsum(-1) - 1
        self.valid[:, :, start:start + n] = new_valid[:, None, :]
        self.pos[:, :, start:start + n] = torch.where(new_valid, pos, -1)[:, None, :]
        self.next_pos = before + new_valid.sum(-1)

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_mask_sizes(self, query_length: int):
        return self.length + query_length, self.cumulative_length - self.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.keys = self.values = self.valid = self.pos = self.next_pos = None
        self.is_initialized, self.all_valid = False, True
        self.length = self.cumulative_length = 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            for name in ("keys", "values", "valid", "pos", "next_pos"):
                t = getattr(self, name)
                setattr(self, name, t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            for name in ("keys", "values", "valid", "pos", "next_pos"):
                setattr(self, name, getattr(self, name).repeat_interleave(repeats, dim=0))

    def real_counts(self) -> torch.Tensor:
        return self.valid[:, 0, : self.length].sum(-1)

    def nbytes(self) -> int:
        if not self.is_initialized:
            return 0
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values))

    def used_nbytes(self) -> int:
        if not self.is_initialized:
            return 0
        per_slot = sum(t[:, :, :1].numel() * t.element_size() for t in (self.keys, self.values))
        return per_slot * self.length


class TriAttentionCache(Cache):
    """KV cache that stays within ``budget`` (+ ``interval`` slack) tokens per row on every pruned layer.

    Args:
        model: the (possibly accelerate-dispatched) transformers model; its RoPE and shapes are read once.
        config: a :class:`TriAttentionConfig`; keyword arguments (``budget=...``) build one.
        calibration: a :class:`CalibrationStats`, a path to a ``.safetensors``/authors' ``.pt`` file, or
            ``None`` for online statistics from the queries seen before the first round (the prompt).
        model_info: precomputed :func:`describe_model` (saves the probe when creating many caches).
        policy: what scores keys each round (default :class:`~.policies.TriAttentionPolicy`); baselines in
            :mod:`.policies` reuse the same cache machinery.

    Example::

        cache = TriAttentionCache(model, budget=256, interval=64)
        out = model.generate(**inputs, past_key_values=cache, max_new_tokens=2000)
        cache.physical_lengths(), cache.rounds, cache.tokens_evicted, cache.nbytes()
    """

    def __init__(
        self,
        model=None,
        config: Optional[TriAttentionConfig] = None,
        calibration: Union[None, str, CalibrationStats] = None,
        *,
        model_info: Optional[ModelInfo] = None,
        ops=None,
        policy=None,
        **config_kwargs,
    ):
        if config is None:
            config = TriAttentionConfig(**config_kwargs)
        elif config_kwargs:
            raise ValueError(f"pass either config or keyword settings, not both (got {sorted(config_kwargs)})")
        if model_info is None:
            if model is None:
                raise ValueError("TriAttentionCache needs the model (or model_info)")
            model_info = describe_model(model)
        if not model_info.pruned_layers:  # e.g. Mistral with a sliding window on every layer
            logger.warning("model type %r has no layer TriAttention can prune (%s): the cache keeps every token",
                           model_info.model_type, "; ".join(sorted(set(model_info.unpruned_reasons.values()))))
        self.config, self.info = config, model_info
        self.ops = ops if ops is not None else load_ops()
        self.policy = policy if policy is not None else TriAttentionPolicy()
        if isinstance(calibration, str):
            calibration = CalibrationStats.load(calibration)
        if calibration is not None:
            calibration.validate(model_info)
        self.calibration = calibration
        pruned = model_info.pruned_layers
        self.layer_budget = dict(zip(pruned, config.layer_budgets(len(pruned))))  # layer -> tokens kept
        layers = [TriAttentionLayer(p, self.layer_budget[i] + config.interval + 1 if p.prunable else None)
                  for i, p in enumerate(model_info.plans)]
        super().__init__(layers=layers)
        self.first_pruned = pruned[0] if pruned else None
        # Rounds fire when the smallest-budget layer is full (every layer grows by the same tokens).
        self._trigger_layer = min(pruned, key=lambda i: (self.layer_budget[i], i)) if pruned else None
        self.rounds = 0
        self.tokens_evicted = 0
        self.compact_seconds = 0.0  # wall time spent in rounds (benchmarks)
        self.score_seconds = 0.0  # the scoring part of it (policy scores + layer combination)
        self.prompt_lengths: Optional[torch.Tensor] = None  # [B] real prompt tokens per row
        # Online statistics: without a file, or mixed into it (online_weight > 0).
        use_online = calibration is None or config.online_weight > 0
        self._online: Optional[Dict[int, "object"]] = {} if use_online else None
        self._layer_stats: Dict[int, Dict[str, torch.Tensor]] = {}
        self._checked_at = -1
        self._warned_prompt = False
        self._row_rounds: Optional[torch.Tensor] = None  # [B] rounds each row went through
        self._online_frozen = False
        # Recent post-RoPE queries per pruned layer, for policies with ``query_window`` (SnapKV/H2O-style).
        self.query_window = int(getattr(self.policy, "query_window", 0) or 0)
        self._recent_queries: Dict[int, tuple] = {}  # layer -> (queries [B, Hq, W, D], pos [B, W], scaling)
        self._rotation_memo: Dict[tuple, bool] = {}

    # -- transformers hooks -------------------------------------------------------------------------------
    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        _ACTIVE.cache = weakref.ref(self)
        if layer_idx == 0:
            self._maybe_compact()
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def get_mask_sizes(self, query_length: int, layer_idx: int):
        self._maybe_compact()  # masks are built before layer 0 runs: compact first so sizes agree
        return super().get_mask_sizes(query_length, layer_idx)

    def reset(self) -> None:
        """Empty the cache for a new sequence (settings and offline calibration are kept)."""
        super().reset()
        self.rounds = self.tokens_evicted = 0
        self.compact_seconds = self.score_seconds = 0.0
        self.prompt_lengths = self._row_rounds = None
        self._checked_at, self._online_frozen = -1, False
        self._recent_queries.clear()
        self._layer_stats.clear()
        if self._online is not None:
            self._online = {}

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("TriAttentionCache cannot be cropped: evicted tokens cannot be restored")

    # -- statistics users asked for ----------------------------------------------------------------------
    def physical_lengths(self) -> List[int]:
        """Slots held per layer now (what memory holds), excluding unused capacity."""
        return [layer.length for layer in self.layers]

    def logical_length(self) -> int:
        return self.get_seq_length()

    def nbytes(self) -> int:
        """Bytes of K/V buffers allocated across layers."""
        return sum(layer.nbytes() for layer in self.layers)

    def used_nbytes(self) -> int:
        """Bytes of K/V slots in use across layers."""
        return sum(layer.used_nbytes() for layer in self.layers)

    def summary(self) -> dict:
        pruned = self.info.pruned_layers
        return {
            "logical_length": self.get_seq_length(),
            "physical_length_pruned_layers": max((self.layers[i].length for i in pruned), default=0),
            "physical_lengths": self.physical_lengths(),
            "pruned_layers": len(pruned),
            "unpruned_layers": len(self.layers) - len(pruned),
            "unpruned_reasons": self.info.unpruned_reasons,  # layer -> why it is kept whole (window, NoPE)
            "rounds": self.rounds,
            "tokens_evicted": self.tokens_evicted,
            "kv_bytes_allocated": self.nbytes(),
            "kv_bytes_used": self.used_nbytes(),
            "compact_seconds": self.compact_seconds,
            "score_seconds": self.score_seconds,
            "scored_layers": len(self.scored_layers()),
            "calibration": self._calibration_kind(),
        }

    def _calibration_kind(self) -> str:
        if self.calibration is None:
            kind = "online"
        elif self._online is None:
            return "offline"
        else:
            kind = f"offline+online(weight {self.config.online_weight:g})"
        if self.config.online_refresh:
            kind += f", refreshed (decay {self.config.online_decay:g})"
        return kind

    # -- online calibration -------------------------------------------------------------------------------
    @property
    def collecting(self) -> bool:
        """True while online statistics are gathered: each row's queries from its prompt until its first
        round (per row, so a batched row gets the statistics it would get alone), or every query with
        ``online_refresh``."""
        return self._online is not None and not self._online_frozen

    def record_queries(self, layer_idx: int, query: torch.Tensor, pos: torch.Tensor, scaling) -> None:
        """Keep the last ``query_window`` post-RoPE queries ``[B, Hq, Lq, D]`` of a layer (positions ``[B, Lq]``,
        -1 for padding) for policies that score keys by recent attention."""
        w = self.query_window
        prev = self._recent_queries.get(layer_idx)
        q, p = query.detach()[:, :, -w:], pos[:, -w:]
        if prev is not None and q.shape[2] < w:
            q = torch.cat([prev[0], q], dim=2)[:, :, -w:]
            p = torch.cat([prev[1], p], dim=1)[:, -w:]
        self._recent_queries[layer_idx] = (q.clone(), p.clone(), scaling)

    def observe_queries(self, layer_idx: int, queries_pre_rope: torch.Tensor, weights: torch.Tensor) -> None:
        """Accumulate pre-RoPE queries ``[B, Hq, T, D]`` of a pruned layer for online statistics."""
        from triattention import QueryFrequencyStats

        stats = self._online.get(layer_idx)
        if stats is None:
            rope = self.info.plans[layer_idx].rope
            stats = QueryFrequencyStats(queries_pre_rope.shape[0], 1, self.info.num_heads, self.info.head_dim,
                                        rope.rotary_dim, style=rope.style, device=queries_pre_rope.device)
            self._online[layer_idx] = stats
        if self._row_rounds is not None and not self.config.online_refresh:
            weights = weights * (self._row_rounds.to(weights.device) == 0)[:, None]
        stats.update(0, queries_pre_rope, weights)

    def _stats_for(self, layer_idx: int, device: torch.device) -> Dict[str, torch.Tensor]:
        cached = self._layer_stats.get(layer_idx)
        if cached is None:
            stats = self._online.get(layer_idx) if self._online is not None else None
            if stats is None and self.calibration is None:
                raise RuntimeError(
                    "online calibration saw no queries: use attn_implementation='triattention' "
                    "(model.set_attn_implementation('triattention')) or pass a calibration file"
                )
            online = {k: v[:, 0].to(device) for k, v in stats.means().items()} if stats is not None else None
            if self.calibration is None:
                cached = online  # [B, Hq, F]
            else:
                cached = {k: v.to(device) for k, v in self.calibration.layer(layer_idx).items()}  # [Hq, F]
                w = self.config.online_weight
                if online is not None and w > 0:  # means of two samples: a weighted mean is again a mean
                    cached = {k: (1.0 - w) * cached[k] + w * online[k] for k in cached}
            self._layer_stats[layer_idx] = cached
        return cached

    # -- compaction ------------------------------------------------------------------------------------------
    def _maybe_compact(self) -> None:
        if self.first_pruned is None:
            return
        layer = self.layers[self._trigger_layer]
        if not layer.is_initialized or layer.cumulative_length == self._checked_at:
            return
        self._checked_at = layer.cumulative_length
        if self.prompt_lengths is None:  # first check after prefill
            self.prompt_lengths = layer.next_pos.clone()
            self._row_rounds = torch.zeros_like(self.prompt_lengths)
        real = layer.real_counts()
        trigger = real >= self.layer_budget[self._trigger_layer] + self.config.interval
        if bool(trigger.any()):
            started = time.perf_counter()
            if self.config.layer_budget_slope:
                self._compact_nested(trigger)
            else:
                self._compact(trigger, real)
            self.compact_seconds += time.perf_counter() - started  # scoring + selection + compaction

    def _protected(self, layer: TriAttentionLayer, n: int, budget: Optional[int] = None) -> torch.Tensor:
        cfg = self.config
        budget = cfg.budget if budget is None else budget
        pos, valid = layer.pos[:, :, :n], layer.valid[:, :, :n]
        protected = pos < cfg.sink_tokens
        if cfg.recent_window:
            protected |= pos >= (layer.next_pos - cfg.recent_window)[:, None, None]
        if cfg.pin_prompt:
            prompt = self.prompt_lengths.to(pos.device)
            pinnable = prompt + cfg.recent_window < budget
            if not bool(pinnable.all()) and not self._warned_prompt:
                logger.warning(
                    "prompt of %s tokens leaves no room in budget %d: its tokens compete for the budget instead "
                    "of being pinned (so generated tokens are not all evicted)", prompt.tolist(), budget)
                self._warned_prompt = True
            protected |= pos < torch.where(pinnable, prompt, 0)[:, None, None]
        return protected & valid

    @torch.no_grad()
    def _compact(self, trigger: torch.Tensor, real: torch.Tensor) -> None:
        cfg, ops = self.config, self.ops
        self._refresh_online_stats()
        keep_real = torch.where(trigger, torch.full_like(real, cfg.budget), real)
        out_len = int(keep_real.max())
        pruned = self.info.pruned_layers
        shared = cfg.granularity != "per_layer_head"  # one keep set for every layer (identical layouts)
        if shared:  # identical layouts: one protection mask serves every layer
            first = self._protected(self.layers[pruned[0]], self.layers[pruned[0]].length)
            protected = {i: first.to(self.layers[i].keys.device) for i in pruned}
        else:
            protected = {i: self._protected(self.layers[i], self.layers[i].length) for i in pruned}
        started = time.perf_counter()
        raw = self._raw_scores(protected)
        extra = {} if cfg.layer_aggregation == "mean" else {"layer_aggregation": cfg.layer_aggregation}
        combined = ops.combine_layers(raw, cfg.granularity, **extra)
        per_layer = [combined[0]] * len(pruned) if shared else combined
        self.score_seconds += time.perf_counter() - started
        selection = None
        for i, scores in zip(pruned, per_layer):
            layer = self.layers[i]
            dev = layer.keys.device
            if selection is None or not shared:
                selection = self._select(layer, scores, keep_real, out_len, protected[i])
            self._apply(layer, *selection)
        self._finish_round(trigger, int((real - keep_real).sum()))

    def _raw_scores(self, protected) -> List[torch.Tensor]:
        """The policy's ``[B, Hkv, N]`` scores of every scored layer (TriAttention scores them all at once)."""
        scored = self.scored_layers()
        if hasattr(self.policy, "round_scores"):
            return self.policy.round_scores(self, scored, protected)
        return [self.policy.layer_scores(self, i, protected[i]) for i in scored]

    def _select(self, layer: TriAttentionLayer, scores: torch.Tensor, keep: torch.Tensor, out_len: int,
                protected: torch.Tensor):
        """Keep sets of one layer from its selection scores (position quotas first, when configured)."""
        n, dev = layer.length, scores.device
        if self.config.position_segments > 1:
            scores = _segment_quota_scores(self.ops)(scores, layer.pos[:, :, :n].to(dev), self.config.position_segments)
        return self.ops.select_keep_indices(scores, layer.valid[:, :, :n].to(dev), keep.to(dev), out_len,
                                            protected.to(dev))

    def _apply(self, layer: TriAttentionLayer, idx: torch.Tensor, keep_valid: torch.Tensor) -> None:
        """Gather the kept slots of one layer to the front and update its metadata."""
        dev = layer.keys.device
        idx, keep_valid = idx.to(dev), keep_valid.to(dev)
        out_len = idx.shape[-1]
        self.ops.compact_([layer.keys, layer.values], idx)
        new_pos = torch.gather(layer.pos[:, :, : layer.length], 2, idx)
        layer.pos[:, :, :out_len] = torch.where(keep_valid, new_pos, -1)
        layer.valid[:, :, :out_len] = keep_valid
        layer.length = out_len
        layer.all_valid = bool(keep_valid.all())

    @torch.no_grad()
    def _compact_nested(self, trigger: torch.Tensor) -> None:
        """Per-layer budgets: one ranking shared by all layers, each keeping its own top ``budget_l``.

        Layers hold different key sets once budgets differ, so scores are merged by RoPE position (mean over
        the scored layers that still hold a key) instead of by slot; a key no scored layer holds ranks last."""
        self._refresh_online_stats()
        pruned = self.info.pruned_layers
        protected = {i: self._protected(self.layers[i], self.layers[i].length, self.layer_budget[i])
                     for i in pruned}
        started = time.perf_counter()
        scored = self.scored_layers()
        raw = self._raw_scores(protected)
        home = self.layers[pruned[0]]
        dev = home.keys.device
        b, h = home.keys.shape[:2]
        span = int(home.next_pos.max())
        total = torch.zeros(b, h, span, device=dev)
        count = torch.zeros(b, h, span, device=dev)
        for i, scores in zip(scored, raw):
            layer = self.layers[i]
            where = layer.pos[:, :, : layer.length].to(dev).clamp_min(0)
            scores = scores.to(dev)
            ok = torch.isfinite(scores)
            total.scatter_add_(2, where, torch.where(ok, scores, 0.0))
            count.scatter_add_(2, where, ok.float())
        self.score_seconds += time.perf_counter() - started
        evicted = 0
        for i in pruned:
            layer = self.layers[i]
            n = layer.length
            where = layer.pos[:, :, :n].to(dev).clamp_min(0)
            seen = count.gather(2, where)
            merged = torch.where(seen > 0, total.gather(2, where) / seen.clamp_min(1), -1e30)
            candidates = (layer.valid[:, :, :n] & ~protected[i]).to(dev)
            scores = merged.masked_fill(~candidates, float("-inf"))
            have = layer.real_counts().to(dev)
            keep = torch.where(trigger.to(dev), have.clamp_max(self.layer_budget[i]), have)
            if bool((keep == have).all()):
                continue  # this layer is not full yet
            self._apply(layer, *self._select(layer, scores, keep, int(keep.max()), protected[i]))
            if i == self._trigger_layer:
                evicted = int((have - keep).sum())
        self._finish_round(trigger, evicted)

    def _finish_round(self, trigger: torch.Tensor, evicted: int) -> None:
        cfg = self.config
        self.rounds += 1
        self.tokens_evicted += evicted  # from the layer that triggers rounds (the smallest budget)
        self._row_rounds += trigger.to(self._row_rounds.device).long()
        if self._online is not None and not cfg.online_refresh and bool((self._row_rounds > 0).all()):
            self._online_frozen = True
        if self._online is not None and cfg.online_decay < 1.0:  # older queries fade (online_refresh)
            for stats in self._online.values():
                stats.scale_(cfg.online_decay)

    def same_rotation(self, i: int, j: int) -> bool:
        """Whether layers ``i`` and ``j`` rotate keys identically (memoised: an allclose per pair every round
        cost ~0.3 ms on CPU)."""
        key = (min(i, j), max(i, j))
        if key not in self._rotation_memo:
            a, b = self.layers[i].plan.rope, self.layers[j].plan.rope
            self._rotation_memo[key] = a is b or a.same_rotation(b)
        return self._rotation_memo[key]

    def scored_layers(self) -> List[int]:
        """Pruned layers whose scores decide a round (every ``score_layer_stride``-th, from ``stride // 2``)."""
        return scored_layer_ids(self.info.pruned_layers, self.config.score_layer_stride)

    def _refresh_online_stats(self) -> None:
        if self._online is not None and not self._online_frozen:
            self._layer_stats.clear()  # some row is still collecting: recompute from the current sums


def scored_layer_ids(pruned: List[int], stride: int) -> List[int]:
    """Every ``stride``-th of the pruned layers, from ``stride // 2`` (at least the first)."""
    return list(pruned[stride // 2::stride]) or list(pruned[:1])


def _segment_quota_scores(ops):
    fn = getattr(ops, "segment_quota_scores", None)
    if fn is None:  # a Hub build older than this option: the pure-torch function is the same math
        from triattention.selection import segment_quota_scores as fn
    return fn
