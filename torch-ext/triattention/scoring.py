"""Fast-path scoring of post-RoPE cached keys (no RoPE inversion, no per-key positions).

Phase cancellation: for a cached key ``k~_f = s k_f e^{i w_f p}`` and query centre ``q_f``,
``Re[q_f conj(k~_f) e^{i w_f t}] = s |q_f||k_f| cos(w_f (t - p) + phi_f)``. Writing ``k~_f = a + ib``
and averaging over the future positions ``t = round_start + d`` gives a score that is *linear* in the
key: ``sum_f a_f u_f + b_f v_f`` with ``u = s^2 (qr C - qi S)``, ``v = s^2 (qi C + qr S)`` and
``C, S`` the offset-averaged cos/sin tables of the round. So a round costs one length-D dot product per
(key, query head) plus the pair-norm term: O(F) per key. ``max`` aggregation keeps one row per offset.

Scores equal the seed API's :func:`score_keys_for_round` times the RoPE attention scale ``s``
(uniform, so rankings and z-scores are unchanged).
"""
from typing import Optional, Tuple, Union

import torch

from . import _dispatch
from .reference import AGGREGATIONS
from .rope import check_style, pair_views


def round_tables(
    omega: torch.Tensor,
    round_start: Union[int, torch.Tensor],
    offsets: torch.Tensor,
    aggregation: str = "mean",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of ``omega * (round_start + offset)``, averaged over offsets for ``mean``.

    Phases are formed in float64 so positions past 131072 keep full accuracy.

    Args:
        omega: ``[F]`` angular rates.
        round_start: int or ``[B]`` tensor (per-row logical position).
    Returns:
        ``(cos, sin)`` float32, each ``[B, O, F]`` (``O = 1`` for mean, ``len(offsets)`` for max).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    t = torch.as_tensor(round_start, device=omega.device).to(torch.float64).reshape(-1)  # [B]
    pos = t[:, None] + offsets.to(device=omega.device, dtype=torch.float64)[None, :]  # [B, O]
    theta = pos[..., None] * omega.to(torch.float64)[None, None, :]  # [B, O, F]
    cos, sin = torch.cos(theta), torch.sin(theta)
    if aggregation == "mean":
        cos, sin = cos.mean(dim=1, keepdim=True), sin.mean(dim=1, keepdim=True)
    return cos.float(), sin.float()


def round_weights(
    q_mean_real: torch.Tensor,
    q_mean_imag: torch.Tensor,
    q_abs_mean: torch.Tensor,
    omega: torch.Tensor,
    round_start: Union[int, torch.Tensor],
    offsets: torch.Tensor,
    *,
    head_dim: int,
    style: str = "half",
    rotary_dim: Optional[int] = None,
    aggregation: str = "mean",
    freq_scale_sq: Optional[torch.Tensor] = None,
    q_pass_mean: Optional[torch.Tensor] = None,
    disable_mlr: bool = False,
    disable_trig: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fold the query centres and the round's phase tables into per-head weights.

    Args:
        q_mean_real, q_mean_imag, q_abs_mean: ``[Hq, F]`` or ``[B, Hq, F]`` pre-RoPE query statistics.
        omega: ``[F]`` angular rates actually used by the model (after rope scaling).
        round_start: int or ``[B]`` per-row logical position of the round.
        head_dim: full head dimension ``D``; ``rotary_dim`` (default ``D``) = ``2F`` rotated dims.
        freq_scale_sq: ``[F]`` RoPE amplitude squared (``attention_scaling ** 2``; ones by default).
        q_pass_mean: ``[Hq, D - R]`` or ``[B, Hq, D - R]`` mean query on non-rotated dims (partial
            rotary); their position-free contribution ``s * <q_pass, k_pass>`` is added. ``None`` ignores them.
    Returns:
        ``(trig_weights [B, Hq, O, D], norm_weights [B, Hq, F])`` float32 for :func:`score_post_rope_keys`.
    """
    check_style(style)
    rotary_dim = head_dim if rotary_dim is None else rotary_dim
    freq = rotary_dim // 2
    for name, t in (("q_mean_real", q_mean_real), ("q_mean_imag", q_mean_imag), ("q_abs_mean", q_abs_mean)):
        if t.shape[-1] != freq or t.dim() not in (2, 3):
            raise ValueError(f"{name} must be [Hq, {freq}] or [B, Hq, {freq}], got {tuple(t.shape)}")
    if omega.shape != (freq,):
        raise ValueError(f"omega must be [{freq}] for rotary_dim {rotary_dim}, got {tuple(omega.shape)}")
    device = q_mean_real.device
    qr, qi, qa = (t.float() if t.dim() == 3 else t.float()[None] for t in (q_mean_real, q_mean_imag, q_abs_mean))
    s2 = torch.ones(freq, device=device) if freq_scale_sq is None else freq_scale_sq.to(device).float()
    cos, sin = round_tables(omega.to(device), round_start, offsets, aggregation)  # [Bt, O, F]
    batch = max(qr.shape[0], cos.shape[0])
    n_off = cos.shape[1]
    w = torch.zeros(batch, qr.shape[1], n_off, head_dim, device=device, dtype=torch.float32)
    if not disable_trig:
        c, s = cos[:, None], sin[:, None]  # [Bt, 1, O, F]
        qr4, qi4 = qr[:, :, None], qi[:, :, None]  # [Bq, Hq, 1, F]
        w_re, w_im = pair_views(w, rotary_dim, style)
        w_re.copy_(s2 * (qr4 * c - qi4 * s))
        w_im.copy_(s2 * (qi4 * c + qr4 * s))
    if q_pass_mean is not None and rotary_dim < head_dim:
        qp = q_pass_mean.float() if q_pass_mean.dim() == 3 else q_pass_mean.float()[None]
        amp = s2.mean().sqrt()  # the key cache carries s once on rotated dims; match that scale
        w[..., rotary_dim:] = amp * qp[:, :, None, :]
    q_centre_abs = torch.sqrt(qr * qr + qi * qi)
    norm = s2 * (qa if disable_mlr else qa - q_centre_abs)
    return w, norm.expand(batch, -1, -1).contiguous()


def score_post_rope_keys(
    keys: torch.Tensor,
    trig_weights: torch.Tensor,
    norm_weights: torch.Tensor,
    *,
    style: str = "half",
    rotary_dim: Optional[int] = None,
) -> torch.Tensor:
    """Score post-RoPE keys ``[B, Hkv, N, D]`` against per-round weights; returns ``[B, Hq, N]`` float32.

    Routed to the compiled kernel when present (see :mod:`._dispatch`).
    """
    check_style(style)
    if keys.dim() != 4:
        raise ValueError(f"keys must be [B, Hkv, N, D], got shape {tuple(keys.shape)}")
    if not keys.is_floating_point():
        raise ValueError(f"keys must be a floating point tensor, got {keys.dtype}")
    batch, hkv, _, head_dim = keys.shape
    rotary_dim = head_dim if rotary_dim is None else rotary_dim
    if trig_weights.dim() != 4 or trig_weights.shape[0] != batch or trig_weights.shape[3] != head_dim:
        raise ValueError(
            f"trig_weights must be [B={batch}, Hq, O, D={head_dim}], got {tuple(trig_weights.shape)}"
        )
    hq = trig_weights.shape[1]
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    if norm_weights.shape != (batch, hq, rotary_dim // 2):
        raise ValueError(
            f"norm_weights must be [{batch}, {hq}, {rotary_dim // 2}], got {tuple(norm_weights.shape)}"
        )
    if trig_weights.device != keys.device or norm_weights.device != keys.device:
        raise ValueError(
            f"keys ({keys.device}), trig_weights ({trig_weights.device}) and norm_weights "
            f"({norm_weights.device}) must be on one device"
        )
    if keys.stride(-1) != 1:
        keys = keys.contiguous()
    return _dispatch.score_keys(
        keys, trig_weights.float(), norm_weights.float(), rotary_dim, style == "interleaved"
    )
