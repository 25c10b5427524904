"""Offline calibration: average the pre-RoPE queries of every layer over a text, chunk by chunk."""
from typing import Iterable, Optional

import torch

from triattention import QueryFrequencyStats

from ..attention import use_triattention_attention
from ..cache import TriAttentionCache
from ..model_info import describe_model
from ..scorers.triattention import TriAttentionScorer
from .stats_file import CalibrationStats, model_metadata


def chunk_token_ids(ids: torch.Tensor, chunk_tokens: int) -> Iterable[torch.Tensor]:
    for start in range(0, ids.numel(), chunk_tokens):
        chunk = ids[start:start + chunk_tokens]
        if chunk.numel() >= 2:
            yield chunk


@torch.no_grad()
def calibrate(model, tokenizer, text: str, *, chunk_tokens: int = 1024, max_tokens: Optional[int] = None,
              progress: bool = True, source: str = "") -> CalibrationStats:
    """Offline statistics from ``text``: split into chunks of ``chunk_tokens`` (each its own sequence, so any
    length fits in memory), run through the model, and average the pre-RoPE queries of every pruned layer."""
    from tqdm.auto import tqdm

    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 2:
        raise ValueError(f"chunk_tokens must be an integer >= 2, got {chunk_tokens!r}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 2):
        raise ValueError(f"max_tokens must be None or an integer >= 2, got {max_tokens!r}")
    if not isinstance(text, str):
        raise TypeError(f"text must be the calibration text (str), got {type(text).__name__}: read a file with "
                        "open(path).read()")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if ids.numel() < 2:
        raise ValueError(f"calibration text has {ids.numel()} tokens, at least 2 are needed (give a longer text; "
                         "thousands of tokens make good statistics)")
    info = describe_model(model)
    rope = info.rope
    total = QueryFrequencyStats(1, info.num_layers, info.num_heads, info.head_dim, rope.rotary_dim, style=rope.style)
    device = next(model.parameters()).device
    base = getattr(model, "model", model)
    chunks = list(chunk_token_ids(ids, chunk_tokens))
    with use_triattention_attention(model):
        for chunk in tqdm(chunks, desc="calibrating", unit="chunk", disable=not progress):
            # Every pruned layer scored (stride 1) so every one collects; the budget is never reached.
            cache = TriAttentionCache(model, model_info=info, budget=chunk.numel() + 2, interval=1,
                                      scorer=TriAttentionScorer())
            base(input_ids=chunk[None].to(device), past_key_values=cache, use_cache=True)
            for layer_idx, stats in cache.online.accumulators.items():
                for name in ("sum_real", "sum_imag", "sum_abs", "sum_pass", "count"):
                    getattr(total, name)[:, layer_idx] += getattr(stats, name)[:, 0].cpu()
    unseen = [i for i in info.pruned_layers if total.count[0, i] == 0]
    if unseen:
        raise RuntimeError(f"calibration captured no queries for layers {unseen}")
    for i in range(info.num_layers):
        if total.count[0, i] == 0:  # unpruned layers: placeholder statistics (never used)
            total.count[0, i] = 1
    means = total.means()
    return CalibrationStats(**{k: means[k][0].contiguous() for k in means},
                            metadata=model_metadata(info, token_count=int(ids.numel()), source=source))
