"""The original TriAttention scoring API, on pre-RoPE (inverted) keys.

Names, argument names and numbers match the authors' ``triattention/methods/pruning_utils.py``
(WeianMao/triattention), so code written against it can switch imports. The runtime uses the
equivalent post-RoPE fast path in :mod:`.scoring`.
"""
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from .rope import check_style, to_complex_pairs

AGGREGATIONS = ("mean", "max")


@dataclass
class HeadFrequencyStats:
    """Per-head calibration statistics in frequency domain.

    Attributes:
        q_mean_complex: complex mean of pre-RoPE queries per frequency, ``[freq_count]``.
        q_abs_mean: mean modulus of pre-RoPE queries per frequency, ``[freq_count]``.
    """

    q_mean_complex: torch.Tensor
    q_abs_mean: torch.Tensor


def build_geometric_offsets(max_length: int, device: torch.device) -> torch.Tensor:
    """Build geometric offset sequence [1, 2, 4, 8, ..., max_length].

    Each offset is a future distance at which a key's importance is evaluated.
    Returns a 1-D float32 tensor of the powers of two ``<= max_length``.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be an integer >= 1, got {max_length!r}")
    offsets: List[float] = []
    value = 1
    while value <= max_length:
        offsets.append(float(value))
        value *= 2
    return torch.tensor(offsets, device=device, dtype=torch.float32)


def compute_frequency_statistics_from_means(
    q_mean_complex: torch.Tensor,
    q_abs_mean: torch.Tensor,
    k_unrot: torch.Tensor,
    *,
    style: str = "half",
    disable_mlr: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compute amplitude, phase, and MLR extra term from Q/K frequency statistics.

    Args:
        q_mean_complex: Mean of Q in complex frequency domain, ``[freq_count]``.
        q_abs_mean: Mean of |Q| in frequency domain, ``[freq_count]``.
        k_unrot: Unrotated key vectors, ``[num_keys, head_dim]``.
        style: RoPE pairing style.
        disable_mlr: If True, use ``q_abs_mean`` directly instead of ``q_abs_mean - |q_mean|``.

    Returns:
        ``(amp, phi, extra)``, each ``[num_keys, freq_count]``.
    """
    check_style(style)
    if not torch.is_complex(q_mean_complex):
        raise ValueError("q_mean_complex must be a complex tensor")
    if k_unrot.dim() != 2:
        raise ValueError(f"k_unrot must be [num_keys, head_dim], got shape {tuple(k_unrot.shape)}")
    freq_count = k_unrot.shape[-1] // 2
    if q_mean_complex.shape != (freq_count,) or q_abs_mean.shape != (freq_count,):
        raise ValueError(
            f"q_mean_complex and q_abs_mean must have shape ({freq_count},) for head_dim {k_unrot.shape[-1]}, "
            f"got {tuple(q_mean_complex.shape)} and {tuple(q_abs_mean.shape)}"
        )
    k_complex = to_complex_pairs(k_unrot, style=style)
    q_mean_abs = torch.abs(q_mean_complex)
    k_abs = torch.abs(k_complex)
    relative = q_mean_complex.unsqueeze(0) * torch.conj(k_complex)
    phi = torch.atan2(relative.imag, relative.real)
    amp = q_mean_abs.unsqueeze(0) * k_abs
    weight = q_abs_mean if disable_mlr else (q_abs_mean - q_mean_abs)
    extra = weight.unsqueeze(0) * k_abs
    return amp, phi, extra


def score_keys_for_round(
    key_indices: torch.Tensor,
    round_start: int,
    amp: torch.Tensor,
    phi: torch.Tensor,
    omega: torch.Tensor,
    extra: torch.Tensor,
    offsets: torch.Tensor,
    aggregation: str,
    freq_scale_sq: torch.Tensor,
    disable_trig: bool = False,
) -> torch.Tensor:
    """Score cached keys for a single pruning round.

    ``S(k, d) = sum_f s_f^2 amp_f cos(omega_f (round_start - p + d) + phi_f) + sum_f s_f^2 extra_f``,
    aggregated (``mean`` or ``max``) over the future offsets ``d``.

    Args:
        key_indices: Position indices of cached keys, ``[num_keys]``.
        round_start: Current generation position.
        amp: Amplitude per key per frequency, ``[num_keys, freq_count]``.
        phi: Phase per key per frequency, ``[num_keys, freq_count]``.
        omega: RoPE frequencies (inv_freq), ``[freq_count]``.
        extra: MLR extra term, ``[num_keys, freq_count]``.
        offsets: Geometric offsets for future distance sampling, ``[num_offsets]``.
        aggregation: 'mean' or 'max' over offsets.
        freq_scale_sq: Per-frequency scaling weights, ``[freq_count]``.
        disable_trig: If True, use only the additive (MLR) term.

    Returns:
        Importance scores ``[num_keys]`` (float32). Higher = more important.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if key_indices.dim() != 1:
        raise ValueError(f"key_indices must be 1-D, got shape {tuple(key_indices.shape)}")
    num_keys = key_indices.shape[0]
    if amp.dim() != 2 or amp.shape[0] != num_keys or phi.shape != amp.shape or extra.shape != amp.shape:
        raise ValueError(
            f"amp, phi and extra must all be [num_keys={num_keys}, freq_count], got "
            f"{tuple(amp.shape)}, {tuple(phi.shape)}, {tuple(extra.shape)}"
        )
    freq_count = amp.shape[1]
    if omega.shape != (freq_count,) or freq_scale_sq.shape != (freq_count,):
        raise ValueError(
            f"omega and freq_scale_sq must be [{freq_count}], got {tuple(omega.shape)} and "
            f"{tuple(freq_scale_sq.shape)}"
        )
    if offsets.dim() != 1 or offsets.numel() == 0:
        raise ValueError(f"offsets must be a non-empty 1-D tensor, got shape {tuple(offsets.shape)}")
    if num_keys == 0:
        return torch.empty(0, device=amp.device, dtype=torch.float32)

    base_delta = round_start - key_indices.to(device=amp.device, dtype=torch.float32)
    delta_grid = base_delta.unsqueeze(1) + offsets.to(amp.device).unsqueeze(0)
    scale = freq_scale_sq.to(device=amp.device, dtype=torch.float32)
    phase = delta_grid.unsqueeze(2) * omega.to(amp.device).view(1, 1, -1) + phi.unsqueeze(1)
    base_scores = (amp.unsqueeze(1) * scale.view(1, 1, -1) * torch.cos(phase)).sum(dim=2)
    additive = (extra * scale.view(1, -1)).sum(dim=1, keepdim=True)
    combined = additive if disable_trig else base_scores + additive
    if aggregation == "mean":
        return combined.mean(dim=1)
    return combined.max(dim=1).values


def select_keys_to_keep(scores: torch.Tensor, *, kv_budget: Optional[int] = None) -> torch.Tensor:
    """Select which keys to retain based on importance scores.

    Args:
        scores: Importance scores, ``[num_keys]``. Higher = more important.
        kv_budget: Absolute number of tokens to retain (top-K). ``None`` or ``>= num_keys`` keeps all.

    Returns:
        Boolean mask ``[num_keys]``; True = keep. Ties go to the earlier key.
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D [num_keys], got shape {tuple(scores.shape)}")
    num_keys = scores.shape[0]
    if kv_budget is not None and (isinstance(kv_budget, bool) or not isinstance(kv_budget, int) or kv_budget < 0):
        raise ValueError(f"kv_budget must be a non-negative integer or None, got {kv_budget!r}")
    if kv_budget is None or kv_budget >= num_keys:
        return torch.ones(num_keys, dtype=torch.bool, device=scores.device)
    order = torch.sort(scores.float(), descending=True, stable=True).indices[:kv_budget]
    keep = torch.zeros(num_keys, dtype=torch.bool, device=scores.device)
    keep[order] = True
    return keep
