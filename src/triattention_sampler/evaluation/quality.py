"""Teacher-forced quality under compression.

A long text is streamed through the model with the cache active, exactly as decoding would see it: the
first forward holds one token (so the "prompt" is one token and nothing else is pinned), every later
token goes through the decode path with rounds firing at the start of a forward step. To make this fast
on a CPU, tokens are fed in chunks of ``chunk`` tokens; with ``chunk`` dividing both ``budget`` and
``interval`` (and a first step of 1 token, then ``chunk - 1``), every round fires at exactly the token it
would fire at one token per forward, and each token attends to exactly the keys it would see then, so the
result equals token-by-token decoding (``chunk=1`` is supported and checked equal in the tests).

All methods and budgets run in lockstep with one full-cache reference pass, so the reference log-probs of
a chunk are computed once and compared immediately (no logits kept in memory).
"""
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..cache import TriAttentionCache
from ..config import TriAttentionConfig
from ..model_info import describe_model
from ..scorers.registry import REFERENCE, UNBOUNDED
from ..scorers.streamingllm import StreamingLLMScorer
from .metrics import token_metrics


def feed_schedule(n_tokens: int, chunk: int) -> List[Tuple[int, int]]:
    """(start, end) of each forward: 1 token, then ``chunk - 1``, then ``chunk`` at a time."""
    spans, start = [], 0
    first = [1, chunk - 1] if chunk > 1 else [1]
    for size in first:
        if start < n_tokens and size > 0:
            spans.append((start, min(start + size, n_tokens)))
            start = spans[-1][1]
    while start < n_tokens:
        spans.append((start, min(start + chunk, n_tokens)))
        start = spans[-1][1]
    return spans


@torch.no_grad()
def stream_quality(model, ids: torch.Tensor, runs: Dict[str, TriAttentionCache], *, chunk: int = 32,
                   progress: bool = True, desc: str = "streaming") -> Dict[str, Dict[str, torch.Tensor]]:
    """Stream ``ids [T]`` through a full-cache reference and every cache in ``runs`` (label -> cache).

    Returns label -> per-token metrics (``nll``, ``nll_ref``, ``kl``, ``agree``: ``[T-1]`` float32 for
    predicting token ``t+1`` from ``t``), plus ``"_timing"`` seconds per label and ``"_summary"`` with each
    cache's ``summary()`` at the end.
    """
    from tqdm.auto import tqdm

    for label, cache in runs.items():
        cfg = cache.config
        if cfg.budget < UNBOUNDED and (cfg.budget % chunk or cfg.interval % chunk):
            raise ValueError(f"chunk {chunk} must divide budget ({cfg.budget}) and interval ({cfg.interval}) "
                             f"of {label!r} so that rounds fire where token-by-token decoding fires them")
    info = next(iter(runs.values())).info if runs else describe_model(model)
    ref = TriAttentionCache(model_info=info, config=TriAttentionConfig(budget=UNBOUNDED, interval=1),
                            scorer=StreamingLLMScorer())
    device = next(model.parameters()).device
    ids = ids.to(device)
    n = int(ids.numel())
    out = {label: {k: [] for k in ("nll", "nll_ref", "kl", "agree", "correct")} for label in runs}
    timing = {label: 0.0 for label in [REFERENCE, *runs]}
    spans = feed_schedule(n - 1, chunk)  # the last token is only a target
    for start, end in tqdm(spans, desc=desc, unit="chunk", disable=not progress):
        x = ids[None, start:end]
        targets = ids[start + 1:end + 1]
        t0 = time.perf_counter()
        logp_ref = torch.log_softmax(model(input_ids=x, past_key_values=ref, use_cache=True).logits[0].float(), -1)
        timing[REFERENCE] += time.perf_counter() - t0
        for label, cache in runs.items():
            t0 = time.perf_counter()
            logits = model(input_ids=x, past_key_values=cache, use_cache=True).logits[0].float()
            timing[label] += time.perf_counter() - t0
            m = token_metrics(logp_ref, torch.log_softmax(logits, -1), targets)
            for k, v in m.items():
                out[label][k].append(v.cpu())
    result = {label: {k: torch.cat(v) if v else torch.zeros(0) for k, v in d.items()} for label, d in out.items()}
    result["_timing"] = timing
    result["_summary"] = {label: cache.summary() for label, cache in runs.items()}
    return result
