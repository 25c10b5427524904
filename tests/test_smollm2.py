"""The real default model, SmolLM2-135M-Instruct (loaded once per session)."""
import pytest
import torch

import triattention_sampler as ts

PROMPTS = [
    "Explain why the sky is blue.",
    "Write a short poem about the sea, the wind and the stars at night.",
    "List three uses of copper.",
]


def chat_batch(tok, prompts):
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    return tok(texts, return_tensors="pt", padding=True)


def sdpa_generate(model, batch, new):
    model.set_attn_implementation("sdpa")
    try:
        return model.generate(**batch, max_new_tokens=new, do_sample=False)
    finally:
        model.set_attn_implementation("triattention")


@pytest.mark.slow
@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["single", "batch3"])
def test_budget_above_length_matches_sdpa_for_256_tokens(smollm2, prompts):
    model, tok = smollm2
    batch = chat_batch(tok, prompts)
    ref = sdpa_generate(model, batch, 256)
    out, cache = ts.generate(model, batch["input_ids"], batch["attention_mask"], budget=4096, max_new_tokens=256,
                             do_sample=False, return_cache=True)
    assert cache.rounds == 0
    assert torch.equal(out, ref)


@pytest.mark.slow
def test_budget_256_interval_64_bounds_logical_length_and_batch_equals_solo(smollm2):
    model, tok = smollm2
    new = 600
    batch = chat_batch(tok, PROMPTS[:2])
    cache = ts.TriAttentionCache(model, budget=256, interval=64)
    seen = []
    cache.add_round_callback(lambda c: seen.append(max(c.physical_lengths())))
    with ts.use_triattention_attention(model):
        out = model.generate(**batch, past_key_values=cache, max_new_tokens=new, min_new_tokens=new,
                             do_sample=False)
    assert cache.rounds >= 4 and all(n <= 256 + 64 for n in seen)
    assert max(cache.physical_lengths()) <= 320
    assert cache.get_seq_length() == batch["input_ids"].shape[1] + new - 1
    width = batch["input_ids"].shape[1]
    for row, prompt in enumerate(PROMPTS[:2]):
        solo = chat_batch(tok, [prompt])
        ids = ts.generate(model, solo["input_ids"], solo["attention_mask"], budget=256, interval=64,
                          max_new_tokens=new, min_new_tokens=new, do_sample=False)
        assert torch.equal(out[row, width:], ids[0, solo["input_ids"].shape[1]:])


@pytest.mark.slow
def test_dispatched_split_map_gives_same_tokens(smollm2):
    from accelerate import dispatch_model
    from accelerate.hooks import remove_hook_from_submodules

    model, tok = smollm2
    batch = chat_batch(tok, PROMPTS[:1])
    ref = ts.generate(model, batch["input_ids"], budget=64, interval=16, max_new_tokens=120, do_sample=False)
    device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    device_map.update({f"model.layers.{i}": "cpu" for i in range(30)})
    dispatched = dispatch_model(model, device_map=device_map, force_hooks=True,
                                skip_keys=model._skip_keys_device_placement)
    try:
        out = ts.generate(dispatched, batch["input_ids"], budget=64, interval=16, max_new_tokens=120,
                          do_sample=False)
    finally:
        remove_hook_from_submodules(model)
    assert torch.equal(out, ref)


@pytest.mark.slow
def test_offline_calibration_file_from_text_validates_and_generates(smollm2, tmp_path):
    model, tok = smollm2
    text = " ".join(["The river carried the boat past the old mill, and the miller waved from the bank."] * 60)
    stats = ts.calibrate(model, tok, text, chunk_tokens=256, progress=False, source="test")
    assert stats.token_count > 500 and stats.q_mean_real.shape == (30, 9, 32)
    path = str(tmp_path / "smollm2.safetensors")
    stats.save(path)
    batch = chat_batch(tok, PROMPTS[:1])
    out, cache = ts.generate(model, batch["input_ids"], calibration=path, budget=64, interval=16,
                             max_new_tokens=80, do_sample=False, return_cache=True)
    assert cache.rounds > 0 and cache.summary()["calibration"] == "offline"
    # Real query centres are concentrated (paper: Q concentration); random ones would give R near 0.
    r = torch.sqrt(stats.q_mean_real ** 2 + stats.q_mean_imag ** 2) / stats.q_abs_mean
    assert float(r.median()) > 0.5


@pytest.mark.slow
def test_buffers_after_the_first_round_fit_budget_plus_interval(smollm2):
    """A 2048-token prompt at budget 256 / interval 64: after the first round every layer holds 256 + 64 + 1 slots."""
    model, tok = smollm2
    text = " ".join(f"Night {i}: the keeper climbed the stairs and lit the lamp." for i in range(400))
    ids = tok(text, return_tensors="pt")["input_ids"][:, :2048]
    assert ids.shape[1] == 2048
    cache = ts.TriAttentionCache(model, budget=256, interval=64)
    with ts.use_triattention_attention(model), torch.no_grad():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
        prompt_bytes = cache.nbytes()
        model(input_ids=ids[:, -1:], past_key_values=cache, use_cache=True)  # the round runs first
    slot = 2 * model.config.num_key_value_heads * model.config.head_dim * 4  # K and V, fp32, per layer
    layers = model.config.num_hidden_layers
    assert prompt_bytes == layers * 2048 * slot  # the prompt exactly (no headroom, no copy)
    assert cache.rounds == 1 and cache.nbytes() == layers * (256 + 64 + 1) * slot


@pytest.mark.slow
def test_static_cache_gives_the_eager_caches_tokens(smollm2):
    """static=True (fixed buffers, what torch.compile captures) decodes the same tokens as the eager cache: a
    left-padded batch of two, greedy, rounds every 16 tokens."""
    model, tok = smollm2
    batch = chat_batch(tok, PROMPTS[:2])
    kw = dict(budget=64, interval=16, max_new_tokens=160, min_new_tokens=160, do_sample=False, return_cache=True)
    eager, cache = ts.generate(model, batch["input_ids"], batch["attention_mask"], **kw)
    static, fixed = ts.generate(model, batch["input_ids"], batch["attention_mask"], static=True, **kw)
    assert fixed.frozen and fixed.rounds == cache.rounds >= 8
    assert torch.equal(eager, static)
