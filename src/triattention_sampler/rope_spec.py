"""RoPE facts of a loaded transformers model, read from the model's own rotary embedding.

We call the model's rotary module with known positions and read back what it really applies: the
angular rate of each frequency (after any rope scaling), the attention scaling baked into cos/sin, the
rotated dimension count (partial rotary) and the table layout that reveals the pairing. Nothing is
looked up from a table of model names.
"""
import os
from dataclasses import dataclass
from typing import List, Optional

import torch

# Rope types whose frequencies change with sequence length, or that rotate several position streams.
UNSUPPORTED_ROPE_TYPES = {
    "dynamic": "dynamic NTK scaling changes the frequencies with the sequence length at run time",
    "longrope": "longrope switches between short and long frequency factors with the sequence length",
    "su": "su/longrope switches between short and long frequency factors with the sequence length",
    "mrope": "M-RoPE rotates several position streams (text/height/width)",
}


class UnsupportedModelError(ValueError):
    """The model cannot be compressed with TriAttention; the message names the model type and reason."""


@dataclass
class RopeSpec:
    """What one attention layer's RoPE does.

    Attributes:
        omega: ``[rotary_dim // 2]`` float32 angular rate per frequency, as applied.
        scale: attention scaling multiplied into cos/sin (1.0 for plain RoPE).
        style: pairing, ``"half"`` or ``"interleaved"``.
        head_dim: full head dimension; ``rotary_dim`` <= ``head_dim`` dims are rotated.
        rope_type, theta: informational, recorded in calibration files.
    """

    omega: torch.Tensor
    scale: float
    style: str
    head_dim: int
    rotary_dim: int
    rope_type: str = "default"
    theta: float = 0.0

    @property
    def freq_count(self) -> int:
        return self.rotary_dim // 2

    def freq_scale_sq(self, device=None) -> torch.Tensor:
        return torch.full((self.freq_count,), self.scale ** 2, device=device)


@dataclass
class LayerPlan:
    """How the cache treats one decoder layer: pruned with TriAttention, or kept as is (and why)."""

    prunable: bool
    rope: Optional[RopeSpec]
    reason: str = ""
    sliding_window: Optional[int] = None


def _rope_params(config) -> dict:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        # Per layer type (e.g. Gemma3: full_attention / sliding_attention).
        return params.get("full_attention", next(iter(params.values())))
    return params if isinstance(params, dict) else {}


def _check_supported(config) -> None:
    model_type = getattr(config, "model_type", "?")
    params = _rope_params(config)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type in UNSUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"model type {model_type!r} uses rope_type={rope_type!r}: {UNSUPPORTED_ROPE_TYPES[rope_type]}, "
            "so cached keys cannot be scored by phase cancellation. TriAttention supports default, linear, "
            "llama3 and yarn RoPE."
        )
    if "mrope_section" in params:
        raise UnsupportedModelError(f"model type {model_type!r} uses M-RoPE ({UNSUPPORTED_ROPE_TYPES['mrope']})")


def text_config(model):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def find_rotary_embedding(model) -> torch.nn.Module:
    base = getattr(model, "model", model)
    rotary = getattr(base, "rotary_emb", None)
    if rotary is None:
        for module in model.modules():
            if hasattr(module, "inv_freq") and callable(module):
                return module
        raise UnsupportedModelError(
            f"model type {getattr(model.config, 'model_type', '?')!r}: no rotary embedding module found "
            "(TriAttention needs a RoPE model)"
        )
    return rotary


def probe_rotary(rotary: torch.nn.Module, head_dim: int, rope_type: str = "default", theta: float = 0.0,
                 **call_kwargs) -> RopeSpec:
    """Read omega, scaling, rotary dim and pairing from a rotary module's cos/sin at positions 0 and 1."""
    param = next(iter(rotary.buffers()), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, 2, head_dim, device=device, dtype=torch.float32)
    pos = torch.arange(2, device=device)[None]
    cos, sin = rotary(x, pos, **call_kwargs)
    cos, sin = cos.reshape(-1, cos.shape[-1]).double().cpu(), sin.reshape(-1, sin.shape[-1]).double().cpu()
    rotary_dim = cos.shape[-1]
    if rotary_dim % 2 or rotary_dim > head_dim:
        raise UnsupportedModelError(f"rotary table width {rotary_dim} does not fit head_dim {head_dim}")
    scale = float(cos[0, 0])  # cos(0) * attention_scaling
    half = rotary_dim // 2
    if torch.allclose(cos[1, :half], cos[1, half:]) and torch.allclose(sin[1, :half], sin[1, half:]):
        style, c1, s1 = "half", cos[1, :half], sin[1, :half]
    elif torch.allclose(cos[1, 0::2], cos[1, 1::2]) and torch.allclose(sin[1, 0::2], sin[1, 1::2]):
        style, c1, s1 = "interleaved", cos[1, 0::2], sin[1, 0::2]
    else:
        raise UnsupportedModelError("rotary cos/sin table has neither half nor interleaved layout")
    omega = torch.atan2(s1, c1)  # rate per position; < pi for every real RoPE
    inv_freq = getattr(rotary, "inv_freq", None)
    if inv_freq is not None and inv_freq.numel() == half:
        # Same numbers at full precision (atan2 of fp32 tables is only good to ~1e-7 absolute).
        if torch.allclose(inv_freq.double().cpu(), omega, atol=1e-5, rtol=1e-4):
            omega = inv_freq.double().cpu()
    return RopeSpec(omega=omega.float(), scale=scale, style=style, head_dim=head_dim, rotary_dim=rotary_dim,
                    rope_type=rope_type, theta=theta)


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
    def rope(self) -> RopeSpec:
        """RoPE of the pruned layers (all pruned layers share one RoPE)."""
        return self.plans[self.pruned_layers[0]].rope if self.pruned_layers else self.plans[0].rope


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
    """One :class:`LayerPlan` per decoder layer (the Llama-shaped default; other families in issue 8)."""
    config = text_config(model)
    _check_supported(config)
    params = _rope_params(config)
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", getattr(config, "rope_theta", 0.0)) or 0.0)
    spec = probe_rotary(find_rotary_embedding(model), head_dim, rope_type, theta)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    plans = []
    for kind in layer_types:
        if kind == "sliding_attention" or (window and getattr(config, "use_sliding_window", True) and kind != "full_attention"):
            plans.append(LayerPlan(False, spec, "sliding-window layer", sliding_window=window))
        else:
            plans.append(LayerPlan(True, spec))
    return plans
