"""Calibration statistics: per layer, query head and frequency, the complex mean of pre-RoPE queries and
their mean modulus, kept as float64 sums plus token counts so batches and sequences merge exactly.
"""
from typing import Dict, Optional

import torch

from .rope import check_style, pair_slices, pair_views


class QueryFrequencyStats:
    """Running sums of pre-RoPE query statistics.

    Stored per row ``r`` (1 for offline calibration, the batch size for online per-prompt statistics),
    layer ``l``, query head ``h`` and frequency ``f``:
    ``sum_real/sum_imag/sum_abs [R, L, Hq, F]``, ``sum_pass [R, L, Hq, D - 2F]`` (non-rotated dims of
    partial-rotary models) and ``count [R, L]`` tokens.
    """

    def __init__(self, rows: int, num_layers: int, num_heads: int, head_dim: int, rotary_dim: Optional[int] = None,
                 *, style: str = "half", device: Optional[torch.device] = None):
        check_style(style)
        rotary_dim = head_dim if rotary_dim is None else rotary_dim
        pair_slices(head_dim, rotary_dim, style)  # validates dims
        self.style, self.head_dim, self.rotary_dim = style, head_dim, rotary_dim
        freq = rotary_dim // 2
        opts = dict(device=device, dtype=torch.float64)
        self.sum_real = torch.zeros(rows, num_layers, num_heads, freq, **opts)
        self.sum_imag = torch.zeros_like(self.sum_real)
        self.sum_abs = torch.zeros_like(self.sum_real)
        self.sum_pass = torch.zeros(rows, num_layers, num_heads, head_dim - rotary_dim, **opts)
        self.count = torch.zeros(rows, num_layers, **opts)

    @property
    def num_layers(self) -> int:
        return self.sum_real.shape[1]

    @property
    def num_heads(self) -> int:
        return self.sum_real.shape[2]

    def update(self, layer: int, queries: torch.Tensor, weights: Optional[torch.Tensor] = None) -> None:
        """Accumulate pre-RoPE queries ``[R, Hq, T, D]`` of one layer; ``weights [R, T]`` (0/1) drops padding."""
        if queries.dim() != 4 or queries.shape[1] != self.num_heads or queries.shape[3] != self.head_dim:
            raise ValueError(
                f"queries must be [R, {self.num_heads}, T, {self.head_dim}], got {tuple(queries.shape)}"
            )
        rows = queries.shape[0]
        if rows != self.sum_real.shape[0]:
            raise ValueError(f"queries have {rows} rows, statistics hold {self.sum_real.shape[0]}")
        q = queries.to(device=self.sum_real.device, dtype=torch.float64)
        w = torch.ones(rows, q.shape[2], dtype=torch.float64, device=q.device) if weights is None else \
            weights.to(device=q.device, dtype=torch.float64)
        a, b = pair_views(q, self.rotary_dim, self.style)
        wq = w[:, None, :, None]
        self.sum_real[:, layer] += (a * wq).sum(2)
        self.sum_imag[:, layer] += (b * wq).sum(2)
        self.sum_abs[:, layer] += (torch.sqrt(a * a + b * b) * wq).sum(2)
        self.sum_pass[:, layer] += (q[..., self.rotary_dim:] * wq).sum(2)
        self.count[:, layer] += w.sum(1)

    def merge_(self, other: "QueryFrequencyStats") -> "QueryFrequencyStats":
        """Add another accumulator's sums (same shapes) in place."""
        if other.sum_real.shape != self.sum_real.shape or other.style != self.style:
            raise ValueError(
                f"cannot merge statistics of shape {tuple(other.sum_real.shape)} ({other.style}) into "
                f"{tuple(self.sum_real.shape)} ({self.style})"
            )
        for name in ("sum_real", "sum_imag", "sum_abs", "sum_pass", "count"):
            getattr(self, name).add_(getattr(other, name).to(self.sum_real.device))
        return self

    def scale_(self, factor: float) -> "QueryFrequencyStats":
        """Multiply every sum and count by ``factor`` (exponential forgetting: the means are unchanged now,
        later updates weigh ``1 / factor`` more than what came before)."""
        for name in ("sum_real", "sum_imag", "sum_abs", "sum_pass", "count"):
            getattr(self, name).mul_(factor)
        return self

    def means(self) -> Dict[str, torch.Tensor]:
        """float32 ``q_mean_real``, ``q_mean_imag``, ``q_abs_mean`` ``[R, L, Hq, F]`` and ``q_pass_mean``."""
        if bool((self.count == 0).any()):
            raise ValueError("statistics hold layers with no calibration tokens")
        n = self.count[:, :, None, None]
        return {
            "q_mean_real": (self.sum_real / n).float(),
            "q_mean_imag": (self.sum_imag / n).float(),
            "q_abs_mean": (self.sum_abs / n).float(),
            "q_pass_mean": (self.sum_pass / n).float(),
        }

    def mean_resultant_length(self) -> torch.Tensor:
        """``R_f = |E[q_f]| / E[|q_f|]`` in [0, 1], ``[R, L, Hq, F]``."""
        m = self.means()
        return torch.sqrt(m["q_mean_real"] ** 2 + m["q_mean_imag"] ** 2) / m["q_abs_mean"].clamp_min(1e-12)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {name: getattr(self, name).cpu() for name in ("sum_real", "sum_imag", "sum_abs", "sum_pass", "count")}

    @classmethod
    def from_state_dict(cls, state: Dict[str, torch.Tensor], *, style: str, head_dim: int,
                        device: Optional[torch.device] = None) -> "QueryFrequencyStats":
        rows, layers, heads, freq = state["sum_real"].shape
        out = cls(rows, layers, heads, head_dim, 2 * freq, style=style, device=device)
        for name in ("sum_real", "sum_imag", "sum_abs", "sum_pass", "count"):
            getattr(out, name).copy_(state[name])
        return out
