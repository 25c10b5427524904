"""What a layer's RoPE does, read from the model's own rotary module and rotary function.

For a decoder layer we call the model's rotary embedding module (with the layer's type where the module takes
one, e.g. Gemma3's local and global RoPE) at known positions, and feed those cos/sin tables through the model's
own rotary *function* (``apply_rotary_pos_emb`` of its modeling module) with basis vectors as queries. The
resulting linear maps say exactly what the model applies: which dims pass through unrotated (partial rotary),
how dims are paired (``half`` / ``interleaved``, which the table layout alone cannot tell for GLM), the
attention scaling and the angular rate of each frequency after any rope scaling.
"""
import inspect
import math
import sys
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch

from .errors import UnsupportedModelError

PROBE_POSITIONS = (0, 1, 2, 61)


@dataclass
class RopeSpec:
    """What one attention layer's RoPE does.

    Attributes:
        omega: ``[rotary_dim // 2]`` float32 angular rate per frequency, as applied.
        scale: attention scaling multiplied into cos/sin (1.0 for plain RoPE).
        style: pairing, ``"half"`` or ``"interleaved"``.
        head_dim: full head dimension; the first ``rotary_dim`` <= ``head_dim`` dims are rotated.
        rope_type, theta, params: the config's RoPE settings (``params``: its scalar rope parameters), which
            calibration files record and compare in float64 (a dtype cast of the model does not change them).
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
    params: dict = field(default_factory=dict)

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


