"""The fixed-shape cache (static=True): same tokens as the eager cache, through transformers' compiled generate and
an explicit torch.compile loop, no recompilation across rounds, buffers that keep their addresses (tiny models;
dynamo with the eager backend: the graph capture is what is tested, not a code generator)."""
import pytest
import torch
import torch._dynamo.utils as dynamo_utils
from transformers import CompileConfig

import triattention_sampler as ts

from conftest import tiny_model


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    yield
    torch._dynamo.reset()


def compile_config():
    config = CompileConfig(backend="eager", fullgraph=True, mode=None)
    config._compile_all_devices = True  # transformers compiles on CUDA only unless asked
    return config


def graphs() -> int:
    return dynamo_utils.counters["stats"]["unique_graphs"]


def left_padded():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 128, (2, 14), generator=g)
    mask = torch.ones(2, 14, dtype=torch.long)
    ids[1, :6], mask[1, :6] = 0, 0
    return ids, mask


@pytest.mark.parametrize("budget", [24, 4096])
@pytest.mark.parametrize("padded", [False, True])
def test_static_cache_gives_the_eager_caches_tokens(budget, padded):
    model = tiny_model("llama")
    ids, mask = left_padded() if padded else (torch.randint(3, 128, (1, 9), generator=torch.Generator().manual_seed(6)),
                                              None)
    kw = dict(budget=budget, interval=8, max_new_tokens=90, min_new_tokens=90, do_sample=False, return_cache=True)
    eager, cache = ts.generate(model, ids, mask, **kw)
    static, fixed = ts.generate(model, ids, mask, static=True, **kw)
    compiled, fixed2 = ts.generate(model, ids, mask, static=True, compile_config=compile_config(), **kw)
    assert torch.equal(eager, static) and torch.equal(eager, compiled)
    assert cache.rounds == fixed.rounds == fixed2.rounds and (cache.rounds > 5 if budget < 100 else cache.rounds == 0)
    assert graphs() >= 1  # the decode step was captured


def test_sampling_matches_the_eager_cache():
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(7))
    outs = []
    for static in (False, True):
        torch.manual_seed(0)
        outs.append(ts.generate(model, ids, budget=20, interval=8, static=static, max_new_tokens=80,
                                min_new_tokens=80, do_sample=True, temperature=0.9, top_p=0.95))
    assert torch.equal(outs[0], outs[1])


def test_explicit_torch_compile_loop_does_not_recompile_across_rounds_and_keeps_addresses():
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (1, 10), generator=torch.Generator().manual_seed(8))
    cache = ts.TriAttentionCache(model, budget=48, interval=16, static=True)
    eager_cache = ts.TriAttentionCache(model, budget=48, interval=16)
    forward = torch.compile(model.forward, backend="eager")
    tokens = {}
    with ts.use_triattention_attention(model), torch.no_grad():
        for name, c, fwd in (("eager", eager_cache, model.forward), ("static", cache, forward)):
            out = model(input_ids=ids, past_key_values=c, use_cache=True)
            nxt, tokens[name] = out.logits[:, -1:].argmax(-1), []
            for step in range(1000):
                if name == "static" and step == 200:
                    settled, addresses, nbytes = graphs(), [l.keys.data_ptr() for l in c.layers], c.nbytes()
                    rounds_then = c.rounds
                out = fwd(input_ids=nxt, past_key_values=c, use_cache=True)
                nxt = out.logits[:, -1:].argmax(-1)
                tokens[name].append(int(nxt))
    assert tokens["static"] == tokens["eager"]
    assert cache.rounds - rounds_then >= 7 and cache.rounds == eager_cache.rounds
    assert graphs() == settled  # no graph added over the last 800 steps and their rounds
    assert [l.keys.data_ptr() for l in cache.layers] == addresses and cache.nbytes() == nbytes
    capacity = 80  # budget + interval + 1 = 65 slots, rounded up to a multiple of 16 (aligned mask rows)
    assert cache.nbytes() == sum(2 * l.keys[:, :, :1].numel() * l.keys.element_size() * capacity
                                 for l in cache.layers)
    assert max(cache.physical_lengths()) <= 48 + 16 + 1


def test_transformers_compiled_generate_does_not_recompile_across_rounds():
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (1, 10), generator=torch.Generator().manual_seed(9))
    calib = ts.CalibrationStats(*(t.clone() for t in _calibration(model)), metadata={})
    # With an offline file nothing is collected online, so one graph serves every decode step.
    out, cache = ts.generate(model, ids, calibration=calib, budget=48, interval=16, static=True,
                             compile_config=compile_config(), max_new_tokens=1000, min_new_tokens=1000,
                             do_sample=False, return_cache=True)
    assert cache.rounds >= 7 * 8 and graphs() == 1


def _calibration(model):
    info = ts.describe_model(model)
    shape = (info.num_layers, info.num_heads, info.rope.freq_count)
    g = torch.Generator().manual_seed(0)
    real, imag = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    return real, imag, torch.sqrt(real ** 2 + imag ** 2) + torch.rand(shape, generator=g), \
        torch.zeros(info.num_layers, info.num_heads, 0)


def test_long_prompts_are_read_eagerly_then_the_cache_freezes_and_misuse_is_refused():
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (1, 300), generator=torch.Generator().manual_seed(10))
    out, cache = ts.generate(model, ids, budget=64, interval=16, static=True, max_new_tokens=40, do_sample=False,
                             return_cache=True)
    assert out.shape[1] == 340 and cache.frozen and max(cache.physical_lengths()) <= 64 + 16 + 1
    assert cache.layers[0].keys.shape[2] == 96  # 81 slots rounded up to a multiple of 16, allocated once
    reference = ts.generate(model, ids, budget=64, interval=16, max_new_tokens=40, do_sample=False)
    assert torch.equal(out, reference)
    model.set_attn_implementation("sdpa")
    misused = ts.TriAttentionCache(model, budget=64, static=True)
    model(input_ids=ids[:, :8], past_key_values=misused)
    with pytest.raises(ts.CacheMisuseError, match="set_attn_implementation"):
        model(input_ids=ids[:, 8:9], past_key_values=misused)
    with pytest.raises(ValueError, match="every layer pruned"):
        ts.TriAttentionCache(tiny_model("gemma3_text", num_hidden_layers=4, sliding_window=8, head_dim=16,
                                        layer_types=["sliding_attention", "full_attention"] * 2), static=True)
