"""Model coverage (issue 8): RoPE families on tiny random models built from config (2 layers, seconds each).

Per family: (a) the probed RoPE (pairing, omega, scaling, rotary dim, per layer) reproduces what the model
applies: RoPE(pre-RoPE query captured by a hook on q_proj/q_norm) == the query the attention function
receives, and our inversion of that query == the hooked pre-RoPE query (the online-calibration capture
point); (b) budget >= length gives the same greedy tokens as sdpa (fp32, batch 2 with left padding);
(c) with compaction, pruned layers stay within budget + interval and unpruned layers hold every token;
(d) unsupported configs raise UnsupportedModelError naming the model type and the reason.

The session writes results/compat.json (deterministic: no timings), which scripts/compat_table.py renders
into docs/COMPATIBILITY.md.
"""
import json
import os

import pytest
import torch
import transformers
from transformers import AttentionInterface, AutoConfig
from transformers.masking_utils import AttentionMaskInterface

import triattention_sampler as ts
from triattention.rope import apply_rope, inverse_rope
from triattention_sampler.attention import triattention_attention, triattention_mask
from triattention_sampler.errors import UnsupportedModelError
from triattention_sampler.model_info import decoder_attention_modules, describe_model

from conftest import tiny_model

COMPAT_JSON = os.path.join(os.path.dirname(__file__), "..", "results", "compat.json")

# id -> (model_type, config overrides, expected facts). Special token ids are set inside the vocabulary
# by tiny_model.
FAMILIES = {
    "llama": ("llama", {}, dict(style="half", rotary=16, unpruned={})),
    "llama-llama3-scaling": ("llama", dict(rope_parameters=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=64, rope_theta=10000.0)), dict(style="half", rotary=16, unpruned={})),
    "llama-linear-scaling": ("llama", dict(rope_parameters=dict(rope_type="linear", factor=4.0, rope_theta=10000.0)),
                             dict(style="half", rotary=16, unpruned={})),
    "mistral-sliding-window": ("mistral", dict(sliding_window=16),
                               dict(style="half", rotary=16, unpruned={0: "sliding", 1: "sliding"})),
    "qwen2": ("qwen2", {}, dict(style="half", rotary=16, unpruned={})),
    "qwen2-yarn": ("qwen2", dict(rope_parameters=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=1024,
                                                      rope_theta=10000.0)),
                   dict(style="half", rotary=16, unpruned={}, scaled=True)),
    "qwen3": ("qwen3", dict(head_dim=16), dict(style="half", rotary=16, unpruned={})),
    "gemma3_text": ("gemma3_text", dict(head_dim=16, sliding_window=16,
                                        layer_types=["sliding_attention", "full_attention"]),
                    dict(style="half", rotary=16, unpruned={0: "sliding"})),
    "phi3-partial-rotary": ("phi3", dict(partial_rotary_factor=0.5), dict(style="half", rotary=8, unpruned={})),
    "cohere": ("cohere", dict(use_qk_norm=True), dict(style="interleaved", rotary=16, unpruned={})),
    "glm": ("glm", dict(head_dim=16, partial_rotary_factor=0.5), dict(style="interleaved", rotary=8, unpruned={})),
    "smollm3-nope-layers": ("smollm3", dict(no_rope_layers=[1, 0]), dict(style="half", rotary=16, unpruned={1: "NoPE"})),
    "olmo2": ("olmo2", {}, dict(style="half", rotary=16, unpruned={})),
}

_RESULTS = {}


def record(family, check, outcome="pass", **facts):
    entry = _RESULTS.setdefault(family, {"checks": {}})
    entry["checks"][check] = outcome
    entry.update(facts)


@pytest.fixture(scope="module", autouse=True)
def compat_report():
    yield
    if not _RESULTS:
        return
    path = os.path.abspath(COMPAT_JSON)
    previous = {}
    if os.path.exists(path):  # a partial run (-k) updates only the families it ran
        with open(path) as handle:
            previous = json.load(handle).get("families", {})
    previous.update(_RESULTS)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0],
                   "families": dict(sorted(previous.items()))}, handle, indent=1, sort_keys=True)
        handle.write("\n")


def build(family, attn="triattention"):
    model_type, overrides, _ = FAMILIES[family]
    return tiny_model(model_type, attn=attn, **overrides)


def left_padded(batch=2, length=12, pad=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    ids[1, :pad], mask[1, :pad] = 0, 0
    return ids, mask


def pre_rope_query_hooks(model, info, captured):
    """Forward hooks at the true pre-RoPE point: q_norm output if the layer has one, else q_proj output
    (Phi3: the query slice of qkv_proj). Reshaped to ``[B, Hq, L, D]``."""
    handles = []
    hq, d = info.num_heads, info.head_dim
    for attn in decoder_attention_modules(model):
        idx = attn.layer_idx
        source = next(getattr(attn, n) for n in ("q_norm", "q_proj", "qkv_proj") if getattr(attn, n, None) is not None)

        def hook(module, args, output, idx=idx):
            if output.dim() == 4 and output.shape[1] == hq and output.shape[2] != hq:  # already [B, Hq, L, D]
                captured[idx] = output.detach().clone()  # (Gemma3 normalises after the transpose)
                return
            out = output[..., : hq * d] if output.shape[-1] != d else output
            b, l = out.shape[:2]
            captured[idx] = out.reshape(b, l, hq, d).transpose(1, 2).detach().clone()

        handles.append(source.register_forward_hook(hook))
    return handles


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_probed_rope_is_what_the_model_applies(family):
    record(family, "probe", "fail")
    model = build(family)
    info = describe_model(model)
    expect = FAMILIES[family][2]
    for idx, plan in enumerate(info.plans):
        reason = expect["unpruned"].get(idx)
        assert plan.prunable == (reason is None), (idx, plan)
        if reason:
            assert reason in plan.reason
        if plan.rope is not None:
            assert plan.rope.style == expect["style"] and plan.rope.rotary_dim == expect["rotary"]
            assert plan.rope.source == "function"
    if expect.get("scaled"):
        assert info.rope.scale > 1.0  # YaRN attention factor read from the tables

    received = {}

    def capture(module, query, key, value, attention_mask, **kwargs):
        received[module.layer_idx] = query.detach().clone()
        return triattention_attention(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("triattention_capture", capture)
    AttentionMaskInterface.register("triattention_capture", triattention_mask)
    model.set_attn_implementation("triattention_capture")
    pre = {}
    handles = pre_rope_query_hooks(model, info, pre)
    ids = torch.randint(3, 128, (1, 20), generator=torch.Generator().manual_seed(1))
    cache = ts.TriAttentionCache(model, budget=4096)
    try:
        with torch.no_grad():
            model(input_ids=ids[:, :14], past_key_values=cache, use_cache=True)  # prefill
            model(input_ids=ids[:, 14:], past_key_values=cache, use_cache=True)  # a later chunk: positions 14..19
    finally:
        for h in handles:
            h.remove()
    positions = torch.arange(14, 20)
    for idx, plan in enumerate(info.plans):
        q_pre, q_seen = pre[idx], received[idx]
        if plan.rope is None:  # NoPE: the query reaches attention unrotated
            torch.testing.assert_close(q_seen, q_pre, atol=1e-6, rtol=1e-6)
            continue
        r = plan.rope
        rotated = apply_rope(q_pre.double(), r.omega, positions, r.scale, style=r.style, rotary_dim=r.rotary_dim)
        torch.testing.assert_close(rotated, q_seen.double(), atol=1e-5, rtol=1e-5)
        inverted = inverse_rope(q_seen, r.omega, positions, r.scale, style=r.style, rotary_dim=r.rotary_dim)
        torch.testing.assert_close(inverted, q_pre.double(), atol=1e-5, rtol=1e-5)
    unpruned = {str(i): reason for i, reason in info.unpruned_reasons.items()}
    rope = info.rope
    record(family, "probe", model_type=info.model_type, pruned_layers=info.pruned_layers, unpruned_layers=unpruned,
           rope=dict(style=rope.style, rotary_dim=rope.rotary_dim, head_dim=rope.head_dim, rope_type=rope.rope_type,
                     scale=round(rope.scale, 6), source=rope.source))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_b_budget_above_length_is_token_identical_to_sdpa(family):
    record(family, "identity", "fail")
    ids, mask = left_padded()
    ref_model = build(family, attn="sdpa")
    ref = ref_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=30, min_new_tokens=30,
                             do_sample=False)
    model = build(family)
    cache = ts.TriAttentionCache(model, budget=4096)
    out = model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache, max_new_tokens=30,
                         min_new_tokens=30, do_sample=False)
    assert torch.equal(out, ref)
    assert cache.rounds == 0
    record(family, "identity")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_c_compaction_bounds_pruned_layers_and_leaves_others_whole(family):
    record(family, "compaction", "fail")
    budget, interval, new = 16, 8, 60
    ids, mask = left_padded()
    model = build(family)
    cache = ts.TriAttentionCache(model, budget=budget, interval=interval)
    model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache, max_new_tokens=new,
                   min_new_tokens=new, do_sample=False)
    info = cache.info
    summary = cache.summary()
    assert summary["pruned_layers"] == len(info.pruned_layers)
    assert summary["unpruned_layers"] == len(FAMILIES[family][2]["unpruned"])
    seen = mask.sum(-1) + new - 1  # real tokens each row fed through the model
    for idx, layer in enumerate(cache.layers):
        real = layer.real_counts().cpu()
        if info.plans[idx].prunable:
            assert cache.rounds > 0
            assert bool((real <= budget + interval).all()), (idx, real)
            assert layer.length <= budget + interval
        else:
            assert torch.equal(real, seen), (idx, real, seen)  # every token held
            assert torch.equal(layer.pos[:, 0, : layer.length][layer.valid[:, 0, : layer.length]],
                               torch.cat([torch.arange(int(n)) for n in seen]))
    record(family, "compaction")


def _qwen2_vl():
    from transformers import Qwen2VLForConditionalGeneration

    text = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0))
    config = AutoConfig.for_model("qwen2_vl", text_config=text, image_token_id=5, video_token_id=6,
                                  vision_start_token_id=7,
                                  vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2))
    return Qwen2VLForConditionalGeneration(config)


UNSUPPORTED = {
    "llama-dynamic-ntk": (lambda: tiny_model("llama", rope_parameters=dict(rope_type="dynamic", factor=2.0,
                                                                           rope_theta=10000.0)),
                          r"'llama'.*dynamic"),
    "phi3-longrope": (lambda: tiny_model("phi3", rope_parameters=dict(
        rope_type="longrope", short_factor=[1.0] * 8, long_factor=[2.0] * 8, factor=4.0,
        original_max_position_embeddings=1024, rope_theta=10000.0)), r"'phi3'.*longrope"),
    "qwen2_vl-mrope": (_qwen2_vl, r"'qwen2_vl_text'.*M-RoPE"),
    "gpt2-no-rotary": (lambda: tiny_model("gpt2", n_embd=64, n_layer=2, n_head=4), r"'gpt2'.*no rotary"),
    "mamba-no-kv-cache": (lambda: tiny_model("mamba", state_size=4), r"'mamba'.*not a KV cache"),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_d_unsupported_models_are_refused_by_name_and_reason(name):
    make, pattern = UNSUPPORTED[name]
    model = make()
    with pytest.raises(UnsupportedModelError, match=pattern) as err:
        ts.TriAttentionCache(model, budget=16)
    assert isinstance(err.value, ValueError)
    _RESULTS[name] = {"model_type": getattr(model.config.get_text_config(), "model_type", "?"),
                      "refused": str(err.value), "checks": {"refused": "pass"}}


@pytest.mark.parametrize("family", ["glm", "smollm3-nope-layers"])
def test_calibration_files_record_and_check_the_probed_facts(family):
    from triattention_sampler import CalibrationMismatchError
    from triattention_sampler.calibration import model_metadata

    model = build(family)
    info = describe_model(model)
    f = info.rope.freq_count
    meta = model_metadata(info)
    assert meta["rope_style"] == FAMILIES[family][2]["style"] and meta["rotary_dim"] == FAMILIES[family][2]["rotary"]
    stats = ts.CalibrationStats(torch.ones(2, 4, f), torch.zeros(2, 4, f), torch.full((2, 4, f), 2.0),
                                torch.zeros(2, 4, info.head_dim - info.rope.rotary_dim), dict(meta))
    ts.TriAttentionCache(model, calibration=stats, budget=16)  # its own facts load
    other_style = "half" if meta["rope_style"] == "interleaved" else "interleaved"
    for key, wrong in (("rope_style", other_style), ("pruned_layers", "[0, 1, 2]"), ("rope_scale", 2.0)):
        bad = ts.CalibrationStats(stats.q_mean_real, stats.q_mean_imag, stats.q_abs_mean, stats.q_pass_mean,
                                  {**meta, key: wrong})
        with pytest.raises(CalibrationMismatchError):
            ts.TriAttentionCache(model, calibration=bad, budget=16)
