"""SnapKV (Li et al., arXiv:2404.14469) / H2O-style: what the most recent queries attend to."""
import torch

from .base import Scorer, masked
from .streamingllm import StreamingLLMScorer


class SnapKVScorer(Scorer):
    """Attention of the last ``query_window`` post-RoPE queries to every cached key, averaged over the window and
    the query heads of each KV head, max-pooled along keys (``kernel_size``; 1 = no pooling).

    Until any query was recorded it falls back to recency."""

    name = "snapkv"

    def __init__(self, query_window: int = 32, kernel_size: int = 7):
        for name, value in (("query_window", query_window), ("kernel_size", kernel_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, got {value!r}")
        if query_window < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError("query_window must be >= 1 and kernel_size a positive odd number")
        self.query_window, self.kernel_size = query_window, kernel_size

    def score(self, view, ops):
        if view.queries is None:
            return StreamingLLMScorer().score(view, ops)
        keys = view.keys.float()
        b, hkv, n, d = keys.shape
        q = view.queries.queries.to(keys.device).float()
        qpos = view.queries.positions.to(keys.device)
        hq, w = q.shape[1], q.shape[2]
        scale = view.queries.scaling if view.queries.scaling is not None else d ** -0.5
        logits = torch.einsum("bgqwd,bgnd->bgqwn", q.view(b, hkv, hq // hkv, w, d), keys) * scale
        kpos = view.positions
        visible = view.valid[:, :, None, None, :] & (kpos[:, :, None, None, :] <= qpos[:, None, None, :, None])
        visible &= (qpos >= 0)[:, None, None, :, None]
        attn = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1).nan_to_num(0.0)
        scores = attn.mean(dim=(2, 3))  # [B, Hkv, N]
        if self.kernel_size > 1:
            pad = self.kernel_size // 2
            scores = torch.nn.functional.max_pool1d(scores.reshape(b * hkv, 1, n), self.kernel_size, stride=1,
                                                    padding=pad).reshape(b, hkv, n)
        return masked(scores, view)
