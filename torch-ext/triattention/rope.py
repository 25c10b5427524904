"""RoPE pairing conventions: rotation, inversion and the complex view of a head vector.

Two pairings exist in the wild and mixing them up silently breaks phase cancellation:
``half`` (HF ``rotate_half``, GPT-NeoX: pair f = dims (f, f + F)) and ``interleaved``
(GPT-J, Cohere, GLM: pair f = dims (2f, 2f + 1)).
"""
from typing import Tuple

import torch

STYLES = ("half", "interleaved")


def check_style(style: str) -> str:
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    return style


def _check_even_last_dim(x: torch.Tensor, name: str) -> None:
    if x.dim() == 0 or x.shape[-1] % 2 != 0:
        raise ValueError(f"{name} must have an even last dimension (head_dim), got shape {tuple(x.shape)}")


def rotate_half(x: torch.Tensor, *, style: str = "half") -> torch.Tensor:
    """Rotate tensor for RoPE. Supports 'half' (front/back) and 'interleaved' (even/odd).

    Each complex pair (re, im) becomes (-im, re), i.e. multiplication by i.
    """
    check_style(style)
    _check_even_last_dim(x, "x")
    if style == "interleaved":
        return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def invert_rope(
    rotated: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    scale: float,
    *,
    style: str = "half",
) -> torch.Tensor:
    """Invert RoPE rotation to recover pre-RoPE representation.

    Args:
        rotated: RoPE-rotated tensor ``[..., head_dim]``.
        cos: Cosine table from the rotary embedding (HF layout, attention scaling included).
        sin: Sine table from the rotary embedding.
        scale: Attention scaling factor applied during RoPE (HF ``attention_scaling``).
        style: RoPE pairing style ('half' or 'interleaved').

    Returns:
        Pre-RoPE tensor with RoPE rotation (and scaling) undone.
    """
    check_style(style)
    _check_even_last_dim(rotated, "rotated")
    if scale == 0:
        raise ValueError("scale (attention scaling factor) must be non-zero")
    if cos.shape != sin.shape:
        raise ValueError(f"cos and sin must have the same shape, got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if cos.shape[-1] != rotated.shape[-1]:
        raise ValueError(
            f"cos/sin last dimension {cos.shape[-1]} does not match rotated head_dim {rotated.shape[-1]}"
        )
    base = rotated / scale
    cos_u = cos / scale
    sin_u = sin / scale
    if style == "interleaved":
        # Even and odd slots may carry different tables; solve the 2x2 system per pair.
        even, odd = base[..., ::2], base[..., 1::2]
        cos_e, cos_o = cos_u[..., ::2], cos_u[..., 1::2]
        sin_e, sin_o = sin_u[..., ::2], sin_u[..., 1::2]
        det = (cos_e * cos_o + sin_e * sin_o).clamp_min(1e-12)
        orig_even = (even * cos_o + odd * sin_e) / det
        orig_odd = (odd * cos_e - even * sin_o) / det
        return torch.stack((orig_even, orig_odd), dim=-1).flatten(-2)
    return base * cos_u - rotate_half(base, style=style) * sin_u


def to_complex_pairs(tensor: torch.Tensor, *, style: str = "half") -> torch.Tensor:
    """Convert real tensor to complex representation for frequency analysis.

    Maps head_dim real values to head_dim/2 complex values (fp16/bf16 are upcast to fp32).
    'half': real part = first half of dimensions, imag part = second half.
    'interleaved': real part = even dimensions, imag part = odd dimensions.
    """
    check_style(style)
    _check_even_last_dim(tensor, "tensor")
    real_dtype = torch.float32 if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.dtype
    t = tensor.to(real_dtype)
    if style == "interleaved":
        return torch.complex(t[..., ::2].contiguous(), t[..., 1::2].contiguous())
    half = t.shape[-1] // 2
    return torch.complex(t[..., :half].contiguous(), t[..., half:].contiguous())


def pair_slices(head_dim: int, rotary_dim: int, style: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Dimension indices (re, im) of each rotated frequency pair inside a head vector."""
    check_style(style)
    if rotary_dim % 2 or not 0 < rotary_dim <= head_dim:
        raise ValueError(f"rotary_dim must be even and in (0, head_dim={head_dim}], got {rotary_dim}")
    f = torch.arange(rotary_dim // 2)
    if style == "interleaved":
        return 2 * f, 2 * f + 1
    return f, f + rotary_dim // 2


def pair_views(x: torch.Tensor, rotary_dim: int, style: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(re, im) views ``[..., rotary_dim // 2]`` of the rotated pairs of ``x [..., D]`` (same order as
    :func:`pair_slices`; slicing views instead of index copies, which dominated small rounds on CPU)."""
    check_style(style)
    if style == "interleaved":
        return x[..., 0:rotary_dim:2], x[..., 1:rotary_dim:2]
    half = rotary_dim // 2
    return x[..., :half], x[..., half:rotary_dim]


def apply_rope(x: torch.Tensor, omega: torch.Tensor, positions: torch.Tensor, scale: float = 1.0,
               *, style: str = "half", rotary_dim: int = 0) -> torch.Tensor:
    """Rotate ``x [..., N, D]`` to ``positions [..., N]`` with angular rates ``omega [R/2]`` (fp64 phases).

    Dims past ``rotary_dim`` pass through unscaled, as in HF partial-rotary models.
    """
    head_dim = x.shape[-1]
    rotary_dim = rotary_dim or head_dim
    re_idx, im_idx = pair_slices(head_dim, rotary_dim, style)
    theta = positions.to(torch.float64).unsqueeze(-1) * omega.to(torch.float64)
    cos, sin = torch.cos(theta) * scale, torch.sin(theta) * scale
    xd = x.to(torch.float64)
    a, b = xd[..., re_idx], xd[..., im_idx]
    out = xd.clone()
    out[..., re_idx] = a * cos - b * sin
    out[..., im_idx] = a * sin + b * cos
    return out.to(x.dtype)


def inverse_rope(x: torch.Tensor, omega: torch.Tensor, positions: torch.Tensor, scale: float = 1.0,
                 *, style: str = "half", rotary_dim: int = 0) -> torch.Tensor:
    """Exact inverse of :func:`apply_rope` (rotation by -theta, divide by ``scale`` on rotated dims)."""
    head_dim = x.shape[-1]
    rotary_dim = rotary_dim or head_dim
    re_idx, im_idx = pair_slices(head_dim, rotary_dim, style)
    theta = positions.to(torch.float64).unsqueeze(-1) * omega.to(torch.float64)
    cos, sin = torch.cos(theta) / scale, torch.sin(theta) / scale
    xd = x.to(torch.float64)
    a, b = xd[..., re_idx], xd[..., im_idx]
    out = xd.clone()
    out[..., re_idx] = a * cos + b * sin
    out[..., im_idx] = b * cos - a * sin
    return out
