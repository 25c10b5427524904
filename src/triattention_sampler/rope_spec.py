"""RoPE facts of a loaded transformers model, read from the model itself.

For every decoder layer we call the model's own rotary embedding module (with the layer's type where
the module takes one, e.g. Gemma3's local and global RoPE) at known positions, and feed those cos/sin
tables through the model's own rotary *function* (``apply_rotary_pos_emb`` of its modeling module)
with basis vectors as queries. The resulting linear maps say exactly what the model applies: which
dims pass through unrotated (partial rotary), how dims are paired (``half`` / ``interleaved``, which the
table layout alone cannot tell for GLM), the attention scaling and the angular rate of each frequency
after any rope scaling. Layers that must not be pruned (sliding-window, NoPE) are found from the
attention modules and the config. Nothing is looked up from a table of model names.
"""
import inspect
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

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


class UnsupportedModelError(ValueError):
    """The model cannot be compressed with TriAttention; the message names the model type and reason."""


@dataclass
class RopeSpec:
    """What one attention layer's RoPE does.

    Attributes:
        omega: ``[rotary_dim // 2]`` float32 angular rate per frequency, as applied.
        scale: attention scaling multiplied into cos/sin (1.0 for plain RoPE).
        style: pairing, ``"half"`` or ``"interleaved"``.
        head_dim: full head dimension; the first ``rotary_dim`` <= ``head_dim`` dims are rotated.
        rope_type, theta: informational, recorded in calibration files.
        source: how the pairing was established (``"function"``: the model's rotary function was probed;
            ``"table"``: only the cos/sin table layout was available).
    """

    omega: torch.Tensor
    scale: float
    style: str
    head_dim: int
    rotary_dim: int
    rope_type: str = "default"
    theta: float = 0.0
    source: str = "table"

    @property
    def freq_count(self) -> int:
        return self.rotary_dim // 2

    def freq_scale_sq(self, device=None) -> torch.Tensor:
        return torch.full((self.freq_count,), self.scale ** 2, device=device)

    def same_rotation(self, other: "RopeSpec") -> bool:
        return (self.style == other.style and self.rotary_dim == other.rotary_dim
                and math.isclose(self.scale, other.scale, rel_tol=1e-6)
                and self.omega.shape == other.omega.shape
                and torch.allclose(self.omega.double(), other.omega.double(), rtol=1e-6, atol=1e-9))


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


def find_rotary_function(attention: torch.nn.Module) -> Optional[Callable]:
    """The rotary function the attention module's forward calls (``apply_rotary_pos_emb`` of its module)."""
    module = sys.modules.get(type(attention).__module__)
    fn = getattr(module, "apply_rotary_pos_emb", None)
    return fn if callable(fn) else None


def _rotary_tables(rotary: torch.nn.Module, head_dim: int, positions, layer_type: Optional[str]):
    param = next(iter(rotary.buffers()), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, len(positions), head_dim, device=device, dtype=torch.float32)
    pos = torch.tensor(positions, device=device)[None]
    kwargs = {}
    try:
        if layer_type is not None and "layer_type" in inspect.signature(rotary.forward).parameters:
            kwargs["layer_type"] = layer_type
    except (TypeError, ValueError):
        pass
    with torch.no_grad():
        cos, sin = rotary(x, pos, **kwargs)
    return cos.reshape(len(positions), -1).cpu(), sin.reshape(len(positions), -1).cpu()


def _inv_freq_buffers(rotary: torch.nn.Module) -> List[torch.Tensor]:
    return [buf for name, buf in rotary.named_buffers() if name.endswith("inv_freq") and "original" not in name]


def _refine_omega(omega: torch.Tensor, rotary: torch.nn.Module, angle_far: Optional[torch.Tensor], far: int):
    """Omega from position 1 is good to ~1e-7; prefer the module's own inv_freq when it matches, else
    refine with the angle at a farther position."""
    for buf in _inv_freq_buffers(rotary):
        cand = buf.detach().double().cpu().reshape(-1)
        if cand.shape == omega.shape and torch.allclose(cand, omega, atol=1e-5, rtol=1e-4):
            return cand
    if angle_far is not None:
        turns = torch.round((omega * far - angle_far) / (2 * math.pi))
        return (angle_far + 2 * math.pi * turns) / far
    return omega


def probe_rotary(rotary: torch.nn.Module, head_dim: int, rope_type: str = "default", theta: float = 0.0,
                 **call_kwargs) -> RopeSpec:
    """Table-only probe: omega, scaling, rotary dim and pairing from cos/sin at positions 0, 1 and 61.

    Used when the model's rotary function cannot be found; the pairing then rests on the table layout.
    """
    cos, sin = _rotary_tables(rotary, head_dim, PROBE_POSITIONS, call_kwargs.get("layer_type"))
    cos, sin = cos.double(), sin.double()
    rotary_dim = cos.shape[-1]
    if rotary_dim % 2 or rotary_dim > head_dim:
        raise UnsupportedModelError(f"rotary table width {rotary_dim} does not fit head_dim {head_dim}")
    scale = float(cos[0, 0])  # cos(0) * attention_scaling
    half = rotary_dim // 2
    if torch.allclose(cos[1:, :half], cos[1:, half:]) and torch.allclose(sin[1:, :half], sin[1:, half:]):
        style, re = "half", torch.arange(half)
    elif torch.allclose(cos[1:, 0::2], cos[1:, 1::2]) and torch.allclose(sin[1:, 0::2], sin[1:, 1::2]):
        style, re = "interleaved", 2 * torch.arange(half)
    else:
        raise UnsupportedModelError("rotary cos/sin table has neither half nor interleaved layout")
    omega = torch.atan2(sin[1, re], cos[1, re])
    far = torch.atan2(sin[-1, re], cos[-1, re])
    omega = _refine_omega(omega, rotary, far, PROBE_POSITIONS[-1])
    return RopeSpec(omega=omega.float(), scale=scale, style=style, head_dim=head_dim, rotary_dim=rotary_dim,
                    rope_type=rope_type, theta=theta, source="table")


def probe_rotary_function(fn: Callable, rotary: torch.nn.Module, head_dim: int, rope_type: str = "default",
                          theta: float = 0.0, layer_type: Optional[str] = None,
                          model_type: str = "?") -> RopeSpec:
    """What ``fn(q, k, cos, sin)`` really does to a head vector, with the rotary module's own tables.

    Queries are the ``head_dim`` basis vectors (one per head), so the output at each probed position is
    the full linear map the model applies there. From it: pass-through dims (identity at every position),
    pairing (which dim each rotated dim mixes with), attention scaling (the map at position 0) and omega
    (the rotation angle at position 1, refined at position 61). The spec is then checked to reproduce the
    maps at every probed position.
    """
    from triattention.rope import apply_rope

    cos, sin = _rotary_tables(rotary, head_dim, PROBE_POSITIONS, layer_type)
    n = len(PROBE_POSITIONS)
    basis = torch.eye(head_dim, dtype=torch.float64)[None, :, None, :].expand(1, head_dim, n, head_dim)
    try:
        q_out, _ = fn(basis.clone(), basis.clone(), cos.double()[None], sin.double()[None])
    except Exception as err:  # noqa: BLE001 - an unfamiliar signature: fall back to the table layout
        spec = probe_rotary(rotary, head_dim, rope_type, theta, layer_type=layer_type)
        spec.source = f"table (rotary function not callable: {type(err).__name__})"
        return spec
    maps = q_out[0].double().permute(1, 2, 0)  # [positions, out dim i, in dim j]
    eye = torch.eye(head_dim, dtype=torch.float64)
    passing = [j for j in range(head_dim) if torch.allclose(maps[:, :, j], eye[:, j].expand(n, -1), atol=1e-7)]
    rotary_dim = head_dim - len(passing)
    fail = f"model type {model_type!r}: the rotary function"
    if passing != list(range(rotary_dim, head_dim)) or rotary_dim == 0 or rotary_dim % 2:
        raise UnsupportedModelError(f"{fail} rotates dims other than a leading even block "
                                    f"(pass-through dims {passing})")
    block = maps[:, :rotary_dim, :rotary_dim]
    off = block.abs().sum(0) * (1 - torch.eye(rotary_dim, dtype=torch.float64))
    partner = off.argmax(0)
    half = rotary_dim // 2
    f = torch.arange(half)
    if torch.equal(partner[:half], f + half) and torch.equal(partner[half:], f):
        style, re, im = "half", f, f + half
    elif torch.equal(partner[0::2], 2 * f + 1) and torch.equal(partner[1::2], 2 * f):
        style, re, im = "interleaved", 2 * f, 2 * f + 1
    else:
        raise UnsupportedModelError(f"{fail} pairs dims neither in halves nor interleaved")
    diag0 = torch.diagonal(block[0])
    scale = float(diag0.mean())
    if not torch.allclose(diag0, torch.full_like(diag0, scale), rtol=1e-6) or scale <= 0:
        raise UnsupportedModelError(f"{fail} scales frequencies unequally at position 0 ({diag0.tolist()[:4]}...)")
    omega = torch.atan2(block[1, im, re], block[1, re, re])
    if not bool((omega > 0).all()):
        raise UnsupportedModelError(f"{fail} has non-positive angular rates (min {float(omega.min()):.3g})")
    far = torch.atan2(block[-1, im, re], block[-1, re, re])
    omega = _refine_omega(omega, rotary, far, PROBE_POSITIONS[-1])
    spec = RopeSpec(omega=omega.float(), scale=scale, style=style, head_dim=head_dim, rotary_dim=rotary_dim,
                    rope_type=rope_type, theta=theta, source="function")
    # The spec must reproduce what the function did, at every probed position.
    pos = torch.tensor(PROBE_POSITIONS, dtype=torch.float64)
    predicted = apply_rope(eye.expand(n, head_dim, head_dim).transpose(0, 1), spec.omega.double(), pos,
                           scale, style=style, rotary_dim=rotary_dim)  # [in j, positions, out i]
    err = (predicted.permute(1, 2, 0) - maps).abs().max().item()
    if err > 1e-5 * max(1.0, scale):
        raise UnsupportedModelError(f"{fail} is not a plain rotation by position x omega (max error {err:.3g})")
    return spec


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


def describe_model(model) -> ModelInfo:
    config = text_config(model)
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
