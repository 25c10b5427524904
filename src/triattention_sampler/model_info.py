"""How the cache treats each decoder layer of a loaded transformers model (pruned with TriAttention, or kept
whole and why), and the shape facts calibration files record.

Layers that must not be pruned (sliding-window, NoPE) are found from the attention modules and the config;
each layer's RoPE is probed with :mod:`.rope_probe`. Nothing is looked up from a table of model names.
"""
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from .errors import UnsupportedModelError
from .rope_probe import RopeSpec, find_rotary_function, probe_rotary, probe_rotary_function

# Rope types whose frequencies change with sequence length, or that rotate several position streams.
UNSUPPORTED_ROPE_TYPES = {
    "dynamic": "dynamic NTK scaling changes the frequencies with the sequence length at run time",
    "longrope": "longrope switches between short and long frequency factors with the sequence length",
    "su": "su/longrope switches between short and long frequency factors with the sequence length",
    "mrope": "M-RoPE rotates several position streams (text/height/width)",
}
# Layer types (config.layer_types) that hold a KV cache but must not be pruned.
WINDOWED_LAYER_TYPES = {"sliding_attention": "sliding-window layer", "chunked_attention": "chunked-attention layer"}
PROBE_POSITIONS = (0, 1, 2, 61)



@dataclass
class LayerPlan:
    """How the cache treats one decoder layer: pruned with TriAttention, or kept as is (and why)."""

    prunable: bool
    rope: Optional[RopeSpec]
    reason: str = ""
    sliding_window: Optional[int] = None


def text_config(model):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _model_type(model) -> str:
    return str(getattr(text_config(model), "model_type", None) or getattr(model.config, "model_type", "?"))


def _rope_params(config, layer_type: Optional[str] = None) -> dict:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        # Per layer type (e.g. Gemma3: full_attention / sliding_attention).
        if layer_type in params:
            return params[layer_type]
        return params.get("full_attention", next(iter(params.values())))
    return params if isinstance(params, dict) else {}


def _rope_type(params: dict) -> str:
    return str(params.get("rope_type", params.get("type", "default")) or "default")


def _check_rope_params(model_type: str, params: dict) -> None:
    rope_type = _rope_type(params)
    if rope_type in UNSUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"model type {model_type!r} uses rope_type={rope_type!r}: {UNSUPPORTED_ROPE_TYPES[rope_type]}, "
            "so cached keys cannot be scored by phase cancellation. TriAttention supports default, linear, "
            "llama3 and yarn RoPE."
        )
    if "mrope_section" in params or params.get("mrope_interleaved"):
        raise UnsupportedModelError(f"model type {model_type!r} uses M-RoPE ({UNSUPPORTED_ROPE_TYPES['mrope']})")


def _check_supported(config) -> None:
    """Refusals readable from the config alone (kept for callers that only have a config)."""
    model_type = getattr(config, "model_type", "?")
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    groups = list(params.values()) if params and all(isinstance(v, dict) for v in params.values()) else [params]
    for group in groups:
        if isinstance(group, dict):
            _check_rope_params(model_type, group)


def _check_model_kind(model) -> None:
    model_type = _model_type(model)
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(f"model type {model_type!r} is an encoder-decoder model: TriAttention "
                                    "compresses the self-attention KV cache of decoder-only models")
    if getattr(model, "_is_stateful", False):
        raise UnsupportedModelError(f"model type {model_type!r} keeps recurrent state, not a KV cache: "
                                    "there is nothing for TriAttention to compress")
    types = getattr(text_config(model), "layer_types", None) or []
    odd = sorted({t for t in types if t not in ("full_attention", *WINDOWED_LAYER_TYPES)})
    if odd:
        raise UnsupportedModelError(f"model type {model_type!r} has layer types {odd} (hybrid attention / "
                                    "recurrent layers) whose cache TriAttentionCache does not manage")


def find_rotary_embedding(model) -> torch.nn.Module:
    base = getattr(model, "model", model)
    rotary = getattr(base, "rotary_emb", None)
    if rotary is None:
        for module in model.modules():
            if hasattr(module, "inv_freq") and callable(module):
                return module
        raise UnsupportedModelError(
            f"model type {_model_type(model)!r}: no rotary embedding module found "
            "(TriAttention needs a RoPE model)"
        )
    return rotary


def decoder_attention_modules(model) -> List[torch.nn.Module]:
    """The self-attention module of every decoder layer, in order (what carries ``layer_idx``)."""
    n = text_config(model).num_hidden_layers
    found: Dict[int, torch.nn.Module] = {}
    for module in model.modules():
        idx = getattr(module, "layer_idx", None)
        if isinstance(idx, int) and 0 <= idx < n and idx not in found and (
                hasattr(module, "q_proj") or hasattr(module, "qkv_proj") or hasattr(module, "query_key_value")):
            found[idx] = module
    if len(found) != n:
        raise UnsupportedModelError(
            f"model type {_model_type(model)!r}: found self-attention modules for {len(found)} of {n} layers "
            "(TriAttention needs one attention module with a KV cache per decoder layer)")
    return [found[i] for i in range(n)]


def _layer_window(config, attention: torch.nn.Module, layer_type: Optional[str]) -> Optional[int]:
    """The sliding window the attention module passes to the attention function (None = full attention)."""
    if hasattr(attention, "sliding_window"):
        return attention.sliding_window or None
    if layer_type is not None:
        if layer_type == "chunked_attention":
            return getattr(config, "attention_chunk_size", None) or getattr(config, "sliding_window", None)
        return getattr(config, "sliding_window", None) if layer_type in WINDOWED_LAYER_TYPES else None
    if getattr(config, "use_sliding_window", True) is False:
        return None
    return getattr(config, "sliding_window", None)  # Mistral/Phi3 style: one window for every layer


def _uses_rope(config, attention: torch.nn.Module, idx: int) -> bool:
    """False for NoPE layers (SmolLM3/Llama4 ``no_rope_layers``: 1 = this layer uses RoPE)."""
    if hasattr(attention, "use_rope"):
        return bool(attention.use_rope)
    flags = getattr(config, "no_rope_layers", None)
    if isinstance(flags, (list, tuple)) and idx < len(flags):
        return bool(flags[idx])
    return True


@dataclass
class ModelInfo:
    """Shape and RoPE facts of a model, as the cache and calibration files need them."""

    model_type: str
    name: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    plans: List[LayerPlan]

    @property
    def pruned_layers(self) -> List[int]:
        return [i for i, p in enumerate(self.plans) if p.prunable]

    @property
    def unpruned_reasons(self) -> Dict[int, str]:
        """Layers kept whole, with the reason (sliding window, NoPE)."""
        return {i: p.reason for i, p in enumerate(self.plans) if not p.prunable}

    @property
    def rope(self) -> RopeSpec:
        """RoPE of the pruned layers (all pruned layers share one RoPE)."""
        if self.pruned_layers:
            return self.plans[self.pruned_layers[0]].rope
        return next((p.rope for p in self.plans if p.rope is not None), None)


def _model_name(config) -> str:
    """Hub id, or the folder name of a local checkout (so files travel between machines)."""
    name = str(getattr(config, "_name_or_path", "") or "")
    return os.path.basename(name.rstrip("/")) if name and os.path.isdir(name) else name


def _refuse_non_model(model) -> None:
    """A config or any other object where the loaded model is needed: refused by what it is (a config of a model
    without a KV cache to compress is :class:`UnsupportedModelError`, anything else a ``TypeError`` naming the fix)."""
    if isinstance(model, torch.nn.Module) and hasattr(model, "config"):
        return
    from transformers import PretrainedConfig

    if not isinstance(model, PretrainedConfig):
        raise TypeError(f"expected a loaded transformers model, got {type(model).__name__}: load one with "
                        "AutoModelForCausalLM.from_pretrained(...)")
    config = model.get_text_config() if hasattr(model, "get_text_config") else model
    model_type = str(getattr(config, "model_type", "?"))
    kinds = set(getattr(config, "layer_types", None) or []) | set(getattr(config, "layers_block_type", None) or [])
    odd = sorted(kinds - {"full_attention", "attention", *WINDOWED_LAYER_TYPES})
    if not getattr(config, "num_attention_heads", None) or odd:
        raise UnsupportedModelError(
            f"model type {model_type!r} " + (f"has layer types {odd} (recurrent / hybrid layers)" if odd else
                                             "has no self-attention layers")
            + ": TriAttention compresses the KV cache of attention (decoder-only, RoPE) models")
    _check_supported(config)
    raise TypeError(f"expected the loaded model, got its config ({type(model).__name__}): RoPE is probed from the "
                    "model's modules; build it with AutoModelForCausalLM.from_config(config) or from_pretrained(...)")


def describe_model(model) -> ModelInfo:
    """Shapes, RoPE and the per-layer plan of ``model`` (raises :class:`UnsupportedModelError` with the reason)."""
    _refuse_non_model(model)
    config = text_config(model)
    _check_model_kind(model)
    if not getattr(config, "num_attention_heads", None) or not getattr(config, "num_hidden_layers", None):
        raise UnsupportedModelError(
            f"model type {_model_type(model)!r} has no self-attention layers with a KV cache (its config has no "
            "num_attention_heads / num_hidden_layers): TriAttention compresses the KV cache of attention models")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return ModelInfo(
        model_type=getattr(config, "model_type", "?"),
        name=_model_name(config),
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        head_dim=head_dim,
        plans=plan_layers(model, head_dim),
    )


def plan_layers(model, head_dim: int) -> List[LayerPlan]:
    """One :class:`LayerPlan` per decoder layer.

    A layer is pruned when it attends over the whole cache with RoPE. Sliding-window / chunked layers
    and NoPE layers are kept whole (``reason`` says why). Each layer's RoPE is probed with its own layer
    type, so per-type RoPE (Gemma3 local vs global) is read separately; all pruned layers must share one.
    """
    config = text_config(model)
    model_type = str(getattr(config, "model_type", "?"))
    _check_model_kind(model)
    _check_supported(config)
    if not any(n.endswith("inv_freq") or n.endswith("rotary_emb") for n, _ in model.named_modules()) and not any(
            n.endswith("inv_freq") for n, _ in model.named_buffers()):
        raise UnsupportedModelError(f"model type {model_type!r} has no rotary position embedding (absolute, "
                                    "learned or no positions): TriAttention scores keys by their RoPE phases")
    rotary_model = None
    attentions = decoder_attention_modules(model)
    layer_types = getattr(config, "layer_types", None)
    specs: Dict[tuple, RopeSpec] = {}
    plans = []
    for idx, attention in enumerate(attentions):
        layer_type = layer_types[idx] if layer_types else None
        window = _layer_window(config, attention, layer_type)
        if not _uses_rope(config, attention, idx):
            plans.append(LayerPlan(False, None, "NoPE layer (no rotary embedding)", sliding_window=window))
            continue
        rotary = getattr(attention, "rotary_emb", None)
        if rotary is None:
            rotary = rotary_model = rotary_model or find_rotary_embedding(model)
        key = (id(rotary), layer_type)
        if key not in specs:
            params = _rope_params(config, layer_type)
            _check_rope_params(model_type, params)
            for attr in ("mrope_section",):
                if getattr(rotary, attr, None):
                    raise UnsupportedModelError(f"model type {model_type!r} uses M-RoPE "
                                                f"({UNSUPPORTED_ROPE_TYPES['mrope']})")
            theta = float(params.get("rope_theta", getattr(config, "rope_theta", 0.0)) or 0.0)
            fn = find_rotary_function(attention)
            if fn is None:
                specs[key] = probe_rotary(rotary, head_dim, _rope_type(params), theta, layer_type=layer_type)
            else:
                specs[key] = probe_rotary_function(fn, rotary, head_dim, _rope_type(params), theta,
                                                   layer_type=layer_type, model_type=model_type)
            specs[key].params = {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool))}
        spec = specs[key]
        if window:
            kind = WINDOWED_LAYER_TYPES.get(layer_type or "", "sliding-window layer")
            plans.append(LayerPlan(False, spec, f"{kind} (window {window})", sliding_window=window))
        else:
            plans.append(LayerPlan(True, spec))
    pruned = [p.rope for p in plans if p.prunable]
    if any(not pruned[0].same_rotation(r) for r in pruned[1:]):
        raise UnsupportedModelError(f"model type {model_type!r}: full-attention layers use different RoPE "
                                    "(one calibration layout needs one rotary dim, pairing and frequency set)")
    return plans
