"""Decode speed and physical KV memory versus generated length (greedy decoding, one token per forward)."""
import time
from typing import Dict, List

import torch


@torch.no_grad()
def decode_bench(model, prompt_ids: torch.Tensor, cache, *, max_new_tokens: int, every: int = 512,
                 progress: bool = True, desc: str = "decoding") -> List[Dict[str, float]]:
    """Greedy-decode ``max_new_tokens`` (EOS ignored) with ``cache``; every ``every`` tokens record the
    generated length, tokens/s over the last window, KV bytes allocated/used, and the share of the window's
    wall time spent in rounds (scoring + selection + compaction, ``cache.compact_seconds``)."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    ids = prompt_ids.to(device)[None]
    logits = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1]
    rows = []
    t_window, c_window = time.perf_counter(), cache.compact_seconds
    bar = tqdm(total=max_new_tokens, desc=desc, unit="tok", disable=not progress)
    for step in range(1, max_new_tokens + 1):
        nxt = logits.argmax(-1, keepdim=True)
        logits = model(input_ids=nxt, past_key_values=cache, use_cache=True).logits[:, -1]
        bar.update(1)
        if step % every == 0 or step == max_new_tokens:
            now = time.perf_counter()
            window = step - (rows[-1]["generated"] if rows else 0)
            elapsed = now - t_window
            compact = cache.compact_seconds - c_window
            s = cache.summary()
            rows.append({"generated": step, "logical_length": s["logical_length"],
                         "physical_length": s["physical_length_pruned_layers"],
                         "tokens_per_s": window / elapsed, "ms_per_token": 1000 * elapsed / window,
                         "compact_share": compact / elapsed, "rounds": s["rounds"],
                         "kv_bytes_allocated": s["kv_bytes_allocated"], "kv_bytes_used": s["kv_bytes_used"]})
            t_window, c_window = time.perf_counter(), cache.compact_seconds
    bar.close()
    return rows


@torch.no_grad()
def sampled_decode_bench(model, filler_ids: torch.Tensor, cache, *, lengths, window: int = 256, chunk: int = 64,
                         progress: bool = True, desc: str = "bench") -> List[Dict[str, float]]:
    """Decode speed and KV bytes at several sequence lengths without decoding every token in between.

    The sequence is grown with text (``filler_ids``) fed in chunks of ``chunk`` tokens (use the cache's
    ``interval`` so rounds keep their cadence) up to ``L - window``; then ``window`` tokens are greedily
    decoded one per forward and timed. Rows as in :func:`decode_bench`, ``generated`` = decoded tokens so far.
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    filler_ids = filler_ids.to(device)
    rows, used, decoded = [], 0, 0
    logits = None
    for target in tqdm(sorted(lengths), desc=desc, unit="len", disable=not progress):
        while cache.get_seq_length() < target - window:
            if used >= filler_ids.numel():
                raise ValueError(f"filler text too short for length {target}")
            n = min(chunk, target - window - cache.get_seq_length(), filler_ids.numel() - used)
            piece = filler_ids[None, used:used + n]
            logits = model(input_ids=piece, past_key_values=cache, use_cache=True).logits[:, -1]
            used += n
        t0, c0 = time.perf_counter(), cache.compact_seconds
        for _ in range(window):
            nxt = logits.argmax(-1, keepdim=True)
            logits = model(input_ids=nxt, past_key_values=cache, use_cache=True).logits[:, -1]
        elapsed = time.perf_counter() - t0
        decoded += window
        s = cache.summary()
        rows.append({"generated": decoded, "logical_length": s["logical_length"],
                     "physical_length": s["physical_length_pruned_layers"], "tokens_per_s": window / elapsed,
                     "ms_per_token": 1000 * elapsed / window, "compact_share": (cache.compact_seconds - c0) / elapsed,
                     "rounds": s["rounds"], "kv_bytes_allocated": s["kv_bytes_allocated"],
                     "kv_bytes_used": s["kv_bytes_used"]})
    return rows
