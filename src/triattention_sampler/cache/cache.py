"""A transformers ``Cache`` that compacts itself with TriAttention during generation: the layers' storage plus
transformers' hooks and the round trigger (the round itself is :mod:`.rounds`)."""
import logging
import threading
import weakref
from collections.abc import Mapping
from typing import Callable, Dict, List, Optional, Union

import torch
from transformers.cache_utils import Cache

from ..calibration.stats_file import CalibrationStats, as_calibration
from ..config import TriAttentionConfig
from ..errors import CacheMisuseError
from ..kernel_loading import load_ops
from ..model_info import ModelInfo, decoder_attention_modules, describe_model
from ..scorers.base import Scorer
from ..scorers.triattention import TriAttentionScorer
from .layer import TriAttentionLayer
from .layout import Layout
from .rounds import run_round
from .static import StaticTriAttentionLayer
from .statistics import OnlineStatistics, QueryWindow

logger = logging.getLogger(__name__)
_ACTIVE = threading.local()


def active_cache() -> Optional["TriAttentionCache"]:
    """The TriAttentionCache whose ``update`` ran last on this thread (what the attention function serves)."""
    ref = getattr(_ACTIVE, "cache", None)
    return ref() if ref is not None else None


def scored_layer_ids(pruned: List[int], stride: int) -> List[int]:
    """Every ``stride``-th of the pruned layers, from ``stride // 2`` (at least the first)."""
    return list(pruned[stride // 2::stride]) or list(pruned[:1])


def _check_static(config: TriAttentionConfig, info: ModelInfo, model) -> None:
    if model is None:
        raise ValueError("static=True needs the model (its devices and dtype size the buffers)")
    if info.unpruned_reasons:
        raise ValueError(f"static=True needs every layer pruned; these are kept whole: {info.unpruned_reasons} "
                         "(use static=False for this model)")
    if config.budget >= 1 << 20:
        raise ValueError(f"static=True allocates budget + headroom slots per layer; budget {config.budget} is too "
                         "large for a fixed buffer")


def _wrong_attention(impl) -> CacheMisuseError:
    return CacheMisuseError(
        f"a TriAttentionCache was used with attn_implementation={impl!r}: its compaction and padding are only "
        "handled by the 'triattention' attention function; call model.set_attn_implementation('triattention') or "
        "use triattention_sampler.generate(...)")


class TriAttentionCache(Cache):
    """KV cache that keeps every pruned layer within ``budget`` (+ ``interval`` slack) tokens per row.

    A round runs at the start of a forward, before any layer, once some row would exceed ``budget + interval``
    (``budget + prefill_chunk`` for a prompt read in chunks); it brings every such row back to ``budget``: scores
    from the scored layers, one selection, one in-place gather per layout and device, and buffers larger than
    ``budget + headroom + 1`` slots reallocated. Serve it with ``attn_implementation="triattention"``.

    Args:
        model: the (possibly accelerate-dispatched) transformers model; its RoPE and shapes are read once.
        config: a :class:`TriAttentionConfig` (or a dict of its fields); keyword settings (``budget=...``) build one.
        calibration: :class:`CalibrationStats`, a path (``str`` / ``os.PathLike``) to a ``.safetensors`` or the
            authors' ``.pt``, or ``None`` for online statistics from each row's prompt.
        model_info: precomputed :func:`describe_model` (saves the probe when creating many caches).
        scorer: what scores keys each round (default :class:`TriAttentionScorer`; see :mod:`..scorers`).

    Example::

        cache = TriAttentionCache(model, budget=256, interval=64)
        out = model.generate(**inputs, past_key_values=cache, max_new_tokens=2000)
        cache.summary()  # logical vs physical length, rounds, tokens evicted, KV bytes
    """

    def __init__(self, model=None, config: Union[None, TriAttentionConfig, Mapping] = None,
                 calibration: Union[None, str, "os.PathLike", CalibrationStats] = None, *,
                 model_info: Optional[ModelInfo] = None, ops=None, scorer: Optional[Scorer] = None,
                 **config_kwargs):
        if isinstance(config, Mapping):
            config = TriAttentionConfig.from_dict(config)
        if config is None:
            config = TriAttentionConfig.from_dict(config_kwargs)
        elif not isinstance(config, TriAttentionConfig):
            raise TypeError(f"config must be a TriAttentionConfig or a dict of its fields, got {type(config).__name__}")
        elif config_kwargs:
            raise ValueError(f"pass either config or keyword settings, not both (got {sorted(config_kwargs)})")
        if scorer is not None and not isinstance(scorer, Scorer):
            raise TypeError(f"scorer must be a triattention_sampler.scorers.Scorer, got {type(scorer).__name__}")
        if model_info is None:
            if model is None:
                raise ValueError("TriAttentionCache needs the model (or model_info)")
            model_info = describe_model(model)
        self._modules = [weakref.ref(m) for m in decoder_attention_modules(model)] if model is not None else None
        if not model_info.pruned_layers:  # e.g. Mistral with a sliding window on every layer
            logger.warning("model type %r has no layer TriAttention can prune (%s): the cache keeps every token",
                           model_info.model_type, "; ".join(sorted(set(model_info.unpruned_reasons.values()))))
        self.config, self.info = config, model_info
        self.ops = ops if ops is not None else load_ops()
        self.scorer = scorer if scorer is not None else TriAttentionScorer()
        calibration = as_calibration(calibration)
        if calibration is not None:
            calibration.validate(model_info)
        self.calibration = calibration
        self.static = config.static
        if self.static:
            _check_static(config, model_info, model)
        self.layouts = self._plan_layouts()
        of_layer = {i: layout for layout in self.layouts for i in layout.layer_ids}
        layer_class = StaticTriAttentionLayer if self.static else TriAttentionLayer
        super().__init__(layers=[layer_class(i, p, of_layer[i], self) for i, p in enumerate(model_info.plans)])
        self.pruned_layouts = [layout for layout in self.layouts if layout.budget is not None]
        # Rounds fire when the smallest-budget layout is full (every layer grows by the same tokens).
        self.trigger_layout = min(self.pruned_layouts, key=lambda l: (l.budget, l.leader), default=None)
        self.seq = None  # static=True: logical length as a device scalar (read in a compiled forward)
        self._ref = weakref.ref(self)  # what the attention function finds (set once per forward, at layer 0)
        self._scored = set(self.scored_layers())
        self._round_callbacks: List[Callable[["TriAttentionCache"], None]] = []
        needs_online = self.scorer.needs_statistics and calibration is None
        self.online = OnlineStatistics(model_info, self.scored_layers()) if needs_online else None
        window = int(getattr(self.scorer, "query_window", 0) or 0)
        self.query_window = QueryWindow(window) if window else None
        self._reset_state()

    def _plan_layouts(self) -> List[Layout]:
        cfg, pruned = self.config, self.info.pruned_layers
        budgets = dict(zip(pruned, cfg.layer_budgets(len(pruned))))
        target = {i: budgets[i] + cfg.headroom() + 1 for i in pruned}
        if cfg.granularity == "per_layer_head" or len(set(budgets.values())) > 1:
            layouts = [Layout([i], budgets[i], target[i]) for i in pruned]
        else:
            layouts = [Layout(pruned, cfg.budget, target[pruned[0]])] if pruned else []
        kept = [i for i, p in enumerate(self.info.plans) if not p.prunable]
        layouts += [Layout(kept, None, None)] if kept else []
        if self.static:  # fixed buffers: a multiple of 16 slots keeps SDPA's mask rows aligned (no padding copy)
            for layout in layouts:
                layout.capacity_target = -(-layout.capacity_target // 16) * 16
        return layouts

    def _reset_state(self) -> None:
        for layout in self.pruned_layouts if hasattr(self, "pruned_layouts") else []:
            if not self.static:  # room for prompt chunks again
                layout.capacity_target = layout.budget + self.config.headroom() + 1
        self.rounds = self.tokens_evicted = 0
        self.compact_seconds = self.score_seconds = 0.0
        self.prompt_lengths: Optional[List[int]] = None  # real prompt tokens per row, once known
        self.expected_prompt: Optional[List[int]] = None  # real prompt tokens per row, when the caller says
        self.warned_prompt = False
        self._checked_at = -1
        self._previous_step = 0  # tokens per row of the previous forward
        self._unserved: set = set()  # layers updated this forward whose attention did not come through us
        self._stats: Dict[int, Dict[str, torch.Tensor]] = {}
        self._continuing = False
        self.mask_pending = False  # a static step's mask is still to be built (by the mask function)
        self.frozen = False  # static=True: the layers moved into their fixed buffers (first decode step)
        self._covered = False  # every layer has stored tokens (checked once, at the second forward)

    def add_round_callback(self, fn: Callable[["TriAttentionCache"], None]) -> None:
        """Call ``fn(cache)`` after every round (progress reports, tests that watch the layers shrink)."""
        self._round_callbacks.append(fn)

    # -- transformers hooks -------------------------------------------------------------------------------
    # The per-forward hooks (round trigger, active cache, misuse checks) live in the layers, so a transformers cache
    # whose layers are ours (see ``adopt``) behaves exactly like this one.
    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        if layer_idx >= len(self.layers):
            raise CacheMisuseError(
                f"this TriAttentionCache was built for a model with {len(self.layers)} layers but received layer "
                f"{layer_idx}: build one cache per model, e.g. TriAttentionCache(model, ...) with the model you run")
        return self.layers[layer_idx].update(key_states, value_states)

    def adopt(self, cache: Cache) -> None:
        """Make ``cache`` (an empty transformers cache, e.g. the DynamicCache ``generate`` creates) store through this
        cache's layers: with ``attn_implementation="triattention"`` alone, plain ``model.generate`` then compresses."""
        if cache.get_seq_length() != 0:
            raise CacheMisuseError("only an empty cache can be adopted (it already holds tokens)")
        cache.layers[:] = self.layers
        cache.layer_class_to_replicate = None  # a lazily grown cache: the layers are all here now

    @property
    def _is_user_defined(self) -> bool:
        return getattr(self, "_user_defined", False)

    @_is_user_defined.setter
    def _is_user_defined(self, value: bool) -> None:
        # transformers' generate sets this on a cache passed as past_key_values: a generate call starts here.
        if value and self.get_seq_length() > 0 and not self._continuing:
            raise CacheMisuseError(
                f"this TriAttentionCache already holds a sequence of {self.get_seq_length()} tokens: call "
                "cache.reset() before generating from a new prompt (to continue the same sequence, e.g. the next "
                "chat turn, call cache.continue_sequence() and pass the whole conversation as input_ids)")
        self._continuing = False
        self._user_defined = value

    def continue_sequence(self) -> "TriAttentionCache":
        """Allow the next ``generate`` call to continue the sequence this cache holds (its ``input_ids`` must
        start with that sequence: transformers feeds only the tokens after it)."""
        self._continuing = True
        return self

    def _reset_shared(self) -> None:
        """What all layers share, emptied for a new sequence (layer 0's ``reset`` calls it; settings and offline
        calibration are kept)."""
        for layout in self.layouts:
            layout.reset()
        if self.online is not None:
            self.online.reset()
        if self.query_window is not None:
            self.query_window.reset()
        self._reset_state()

    def _select_rows(self, indices: torch.Tensor) -> None:
        """Keep batch rows ``indices`` in every layer and layout (beam search reorders; layer 0's hooks call it)."""
        host = [int(i) for i in indices.tolist()]
        for layer in self.layers:
            layer.select_rows(indices)
        for layout in self.layouts:
            layout.reorder(indices, host)
        if self.online is not None:
            self.online.select_rows(host)
        if self.prompt_lengths is not None:
            self.prompt_lengths = [self.prompt_lengths[i] for i in host]
        self._stats.clear()

    # -- the attention function's side ---------------------------------------------------------------------
    def serve(self, module, layer_idx: int, key: torch.Tensor) -> Optional[TriAttentionLayer]:
        """The layer whose buffer ``key`` is (None if this call is not served by this cache); refuses modules of
        another model."""
        if layer_idx is None or not 0 <= layer_idx < len(self.layers):
            return None
        layer = self.layers[layer_idx]
        if layer.keys is None or key.data_ptr() != layer.keys.data_ptr() or key.shape[2] != layer.length:
            return None
        if self._modules is not None and self._modules[layer_idx]() is not module:
            raise CacheMisuseError(
                f"this TriAttentionCache was built for another model (its layer {layer_idx} is not this attention "
                "module): build one cache per model, e.g. TriAttentionCache(model, ...) with the model you run")
        self._unserved.discard(layer_idx)
        return layer

    def layer_device(self, layer_idx: int) -> torch.device:
        """Where layer ``layer_idx``'s attention runs (its parameters' device)."""
        return next(self._modules[layer_idx]().parameters()).device

    def check_static_use(self) -> None:
        """A static step is about to run on this thread (misuse is refused before anything is written)."""
        _ACTIVE.cache = self._ref
        impl = getattr(self._modules[0]().config, "_attn_implementation", None)
        if impl != "triattention":
            raise _wrong_attention(impl)
        self.mask_pending = True

    def records_queries(self, layer_idx: int) -> bool:
        return layer_idx in self._scored

    def collecting(self, layer_idx: int) -> bool:
        return self.online is not None and self.online.wants(layer_idx)

    def statistics_for(self, layer_idx: int, device: torch.device) -> Dict[str, Optional[torch.Tensor]]:
        """Query statistics of a layer: the offline file's ``[Hq, F]`` or the rows' online ``[B, Hq, F]``."""
        cached = self._stats.get(layer_idx)
        if cached is None:
            if self.calibration is not None:
                cached = {k: (v.to(device) if v is not None else None)
                          for k, v in self.calibration.layer(layer_idx).items()}
            else:
                cached = self.online.means(layer_idx, device) if self.online is not None else None
                if cached is None:
                    raise RuntimeError(
                        "online calibration saw no queries: use attn_implementation='triattention' "
                        "(model.set_attn_implementation('triattention')) or pass a calibration file")
            self._stats[layer_idx] = cached
        return cached

    # -- rounds ---------------------------------------------------------------------------------------------
    def _begin_forward(self, n: int) -> None:
        """Layer 0 is about to store this forward's ``n`` tokens per row."""
        _ACTIVE.cache = self._ref
        if not self._covered and self._previous_step:  # the second forward: did the first fill them all?
            stored = sum(layer.is_initialized for layer in self.layers)
            if stored < len(self.layers):
                raise CacheMisuseError(
                    f"this TriAttentionCache was built for a model with {len(self.layers)} layers but the model "
                    f"stored only {stored} per forward: build one cache per model, e.g. TriAttentionCache(model, ...)")
            self._covered = True
        self._maybe_round(n)
        self._previous_step = n

    def _check_served(self) -> None:
        if self._unserved:
            module = self._modules[min(self._unserved)]() if self._modules else None
            impl = getattr(getattr(module, "config", None), "_attn_implementation", "another attention function")
            raise _wrong_attention(impl)

    def _maybe_round(self, incoming: int) -> None:
        """Run a round if a row would exceed ``budget + max(interval, incoming)`` after ``incoming`` tokens."""
        self._check_served()
        layout = self.trigger_layout
        if layout is None or layout.length == 0:
            return
        at = self.layers[layout.leader].cumulative_length
        if at == self._checked_at:
            return
        self._checked_at = at
        if self.prompt_lengths is None:
            if self.expected_prompt is not None:  # told by whoever feeds the prompt (generate)
                if all(s >= p for s, p in zip(layout.seen, self.expected_prompt)):
                    self.prompt_lengths = list(self.expected_prompt)
            elif incoming == 1 or self._previous_step == 1:
                self.prompt_lengths = list(layout.seen)  # else: the prompt ends where single-token steps begin
            if self.prompt_lengths is not None and not self.static:
                for each in self.pruned_layouts:  # prompt chunks need no more room: the next round gives it back
                    each.capacity_target = each.budget + self.config.interval + 1
        limit = layout.budget + max(self.config.interval, incoming)
        trigger = [r + incoming > limit for r in layout.real]
        if any(trigger):
            if self.online is not None and self.online.collecting:
                self._stats.clear()  # some row still collects: score with the sums so far
            run_round(self, trigger)

    def finish_round(self, trigger: List[bool], evicted: int) -> None:
        self.rounds += 1
        self.tokens_evicted += evicted  # from the layout that triggers rounds (the smallest budget)
        if self.online is not None and self.prompt_lengths is not None:
            self.online.finish_rows(trigger)
        for fn in self._round_callbacks:
            fn(self)

    def scored_layers(self) -> List[int]:
        """Pruned layers whose scores decide a round (every ``score_layer_stride``-th, from ``stride // 2``)."""
        return scored_layer_ids(self.info.pruned_layers, self.config.score_layer_stride)

    # -- what users asked for ---------------------------------------------------------------------------------
    def physical_lengths(self) -> List[int]:
        """Slots held per layer now (what memory holds), excluding unused capacity."""
        return [layer.length for layer in self.layers]

    def logical_length(self) -> int:
        return int(self.get_seq_length())

    def nbytes(self) -> int:
        """Bytes of K/V buffers allocated across layers."""
        return sum(layer.nbytes() for layer in self.layers)

    def used_nbytes(self) -> int:
        """Bytes of K/V slots in use across layers."""
        return sum(layer.used_nbytes() for layer in self.layers)

    def summary(self) -> dict:
        pruned = self.info.pruned_layers
        return {
            "logical_length": int(self.get_seq_length()),
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
            "scorer": repr(self.scorer),
            "calibration": ("offline" if self.calibration is not None else "online")
            if self.scorer.needs_statistics else "n/a",
        }
