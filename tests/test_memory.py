"""Bounded memory: buffers given back after rounds, long prompts read in chunks within budget + chunk, padded
prefill through per-chunk masks (tiny random models; seconds)."""
import pytest
import torch

import triattention_sampler as ts
from triattention_sampler.attention import sdpa
from triattention_sampler.cache import active_cache

from conftest import tiny_model


def slot_bytes(cache, layer):
    k = cache.layers[layer].keys
    return 2 * k.shape[0] * k.shape[1] * k.shape[3] * k.element_size()


def test_buffers_shrink_to_budget_plus_interval_after_the_first_round():
    model = tiny_model("llama", num_hidden_layers=3)
    ids = torch.randint(3, 128, (2, 300), generator=torch.Generator().manual_seed(0))
    cache = ts.TriAttentionCache(model, budget=32, interval=8)
    with ts.use_triattention_attention(model), torch.no_grad():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
        prompt_bytes = cache.nbytes()
        assert prompt_bytes == sum(300 * slot_bytes(cache, i) for i in range(3))  # the prompt exactly, no headroom
        model(input_ids=ids[:, :1], past_key_values=cache, use_cache=True)  # the round runs before this step
    assert cache.rounds == 1 and cache.physical_lengths() == [33, 33, 33]
    assert cache.nbytes() == sum((32 + 8 + 1) * slot_bytes(cache, i) for i in range(3))
    for layer in cache.layers:  # metadata shrank with the buffers
        assert layer.valid.shape[-1] == layer.keys.shape[2] == 41


def test_never_more_kv_bytes_than_the_full_cache():
    """Each step: allocated bytes <= what a full cache holds for the same tokens (DynamicCache, exact sizes) —
    except for the fixed budget + interval + 1 slots a pruned layer may preallocate."""
    model = tiny_model("llama", num_hidden_layers=2)
    cache = ts.TriAttentionCache(model, budget=64, interval=16)
    ids = torch.randint(3, 128, (1, 400), generator=torch.Generator().manual_seed(1))
    with ts.use_triattention_attention(model), torch.no_grad():
        model(input_ids=ids[:, :10], past_key_values=cache, use_cache=True)
        for t in range(10, 400):
            model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            full = sum((t + 1) * slot_bytes(cache, i) for i in range(2))
            bound = sum((64 + 16 + 1) * slot_bytes(cache, i) for i in range(2))
            assert cache.nbytes() <= max(full, bound), t
    assert cache.rounds > 10


@pytest.mark.parametrize("chunk", [512, 96])
def test_chunked_prefill_of_16k_tokens_holds_at_most_budget_plus_chunk(chunk):
    model = tiny_model("llama", num_hidden_layers=2, max_position_embeddings=32768)
    budget, interval = 256, 64
    ids = torch.randint(3, 128, (1, 16384), generator=torch.Generator().manual_seed(2))
    held = []
    handle = model.model.layers[-1].register_forward_hook(  # after each forward: what the cache holds
        lambda *a: held.append(max(active_cache().physical_lengths())))
    try:
        out, cache = ts.generate(model, ids, budget=budget, interval=interval, prefill_chunk=chunk, max_new_tokens=20,
                                 min_new_tokens=20, do_sample=False, return_cache=True)
    finally:
        handle.remove()
    limit = budget + max(interval, chunk)
    assert out.shape[1] == 16384 + 20 and cache.get_seq_length() == 16384 + 19
    assert len(held) >= 16384 // chunk and max(held) <= limit, max(held)
    assert cache.nbytes() <= sum((limit + 1) * slot_bytes(cache, i) for i in range(2))
    assert cache.prompt_lengths == [16384]  # the prompt is the whole prefill, not its first chunk
    assert cache.rounds >= 16384 // chunk - 1


def test_prefill_chunk_setting_reaches_transformers_and_keeps_results_sane():
    model = tiny_model("llama", num_hidden_layers=2)
    ids = torch.randint(3, 128, (1, 600), generator=torch.Generator().manual_seed(3))
    whole = ts.generate(model, ids, budget=128, interval=32, max_new_tokens=10, do_sample=False)
    chunked, cache = ts.generate(model, ids, budget=1024, interval=32, prefill_chunk=128, max_new_tokens=10,
                                 do_sample=False, return_cache=True)
    reference = ts.generate(model, ids, budget=1024, interval=32, max_new_tokens=10, do_sample=False)
    assert torch.equal(chunked, reference)  # a budget above the length: chunking changes nothing
    assert cache.rounds == 0 and whole.shape == chunked.shape


def test_padded_prefill_through_chunked_masks_matches_sdpa(monkeypatch):
    model = tiny_model("llama", num_hidden_layers=2)
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(3, 128, (3, 70), generator=g)
    mask = torch.ones(3, 70, dtype=torch.long)
    ids[1, :20], mask[1, :20] = 0, 0
    ids[2, :45], mask[2, :45] = 0, 0
    model.set_attn_implementation("sdpa")
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=30, min_new_tokens=30, do_sample=False)
    monkeypatch.setattr(sdpa, "MASK_ELEMENTS", 3 * 70 * 8)  # 8 query rows per mask chunk
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(sdpa.F, "scaled_dot_product_attention",
                        lambda q, *a, **k: calls.append(q.shape[2]) or original(q, *a, **k))
    out = ts.generate(model, ids, mask, budget=4096, max_new_tokens=30, min_new_tokens=30, do_sample=False)
    assert torch.equal(out, ref)
    assert max(calls) == 8 and calls.count(8) >= 2 * (70 // 8)  # the prefill went through 8-row masks
