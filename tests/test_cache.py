"""Cache, attention function and calibration mechanics on tiny random models (seconds)."""
import logging

import pytest
import torch

import triattention_sampler as ts
from triattention_sampler import CalibrationMismatchError, UnsupportedModelError
from triattention_sampler.calibration import model_metadata

from conftest import tiny_model


def run(model, ids, mask=None, new=40, **cache_kwargs):
    cache = ts.TriAttentionCache(model, **cache_kwargs)
    with ts.use_triattention_attention(model):
        out = model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache, max_new_tokens=new,
                             min_new_tokens=new, do_sample=False)
    return out, cache


def left_padded(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.long)
    ids[1, :5], mask[1, :5] = 0, 0
    return ids, mask


def test_budget_above_length_is_token_identical_to_sdpa(tiny_llama):
    ids, mask = left_padded()
    tiny_llama.set_attn_implementation("sdpa")
    ref = tiny_llama.generate(input_ids=ids, attention_mask=mask, max_new_tokens=40, min_new_tokens=40,
                              do_sample=False)
    out, cache = run(tiny_llama, ids, mask, budget=4096)
    assert torch.equal(out, ref)
    assert cache.rounds == 0 and cache.get_seq_length() == 12 + 40 - 1


def test_rounds_keep_every_layer_within_budget_plus_interval(tiny_llama):
    ids = torch.randint(3, 128, (1, 10))
    seen = []
    cache = ts.TriAttentionCache(tiny_llama, budget=16, interval=8)
    cache.add_round_callback(lambda c: seen.append(c.physical_lengths()))
    with ts.use_triattention_attention(tiny_llama):
        tiny_llama.generate(input_ids=ids, past_key_values=cache, max_new_tokens=80, min_new_tokens=80,
                            do_sample=False)
    assert cache.rounds == len(seen) >= 6
    assert all(length == [16, 16] for length in seen)  # back to budget after each round
    assert max(cache.physical_lengths()) <= 16 + 8
    assert cache.get_seq_length() == 10 + 80 - 1  # logical length for positions and masks
    assert cache.tokens_evicted == cache.rounds * 8


def test_batched_rows_equal_solo_runs_with_compaction(tiny_llama):
    ids, mask = left_padded(1)
    out, cache = run(tiny_llama, ids, mask, new=60, budget=16, interval=8, sink_tokens=2, recent_window=4)
    assert cache.rounds > 0
    for row in range(2):
        real = ids[row][mask[row].bool()][None]
        solo, _ = run(tiny_llama, real, new=60, budget=16, interval=8, sink_tokens=2, recent_window=4)
        assert torch.equal(out[row, 12:], solo[0, real.shape[1]:])


@pytest.mark.parametrize("granularity", ["per_head", "per_layer_head", "union"])
def test_granularities_run_and_respect_budget(tiny_llama, granularity):
    out, cache = run(tiny_llama, torch.randint(3, 128, (1, 8)), new=50, budget=12, interval=4,
                     granularity=granularity)
    assert cache.rounds > 0 and max(cache.physical_lengths()) <= 16


def test_pads_are_never_kept_over_real_tokens(tiny_llama):
    ids, mask = left_padded(2)
    _, cache = run(tiny_llama, ids, mask, new=30, budget=10, interval=4)
    layer = cache.layers[0]
    valid, pos = layer.valid[:, :, : layer.length], layer.pos[:, :, : layer.length]
    # Both rows compacted, so each holds budget real tokens (+ those appended since): a pad or filler slot
    # may remain in the physical layout of the row that compacted later, but never takes a real token's place.
    real = valid.sum(-1)
    assert bool(((real >= 10) & (real <= 14)).all())
    assert bool((pos[valid] >= 0).all()) and bool((pos[~valid] == -1).all())


def test_prompt_is_pinned_by_default_and_guarded_when_too_long(tiny_llama, caplog):
    ids = torch.randint(3, 128, (1, 10))
    _, cache = run(tiny_llama, ids, new=40, budget=16, interval=4)
    kept = cache.layers[0].pos[0, :, : cache.layers[0].length]
    assert bool((kept[:, :10] == torch.arange(10)).all())  # prompt positions 0..9 all kept
    with caplog.at_level(logging.WARNING):
        _, cache = run(tiny_llama, torch.randint(3, 128, (1, 20)), new=30, budget=16, interval=4)
    assert "leaves no room" in caplog.text
    kept = cache.layers[0].pos[0, 0, : cache.layers[0].length]
    assert int((kept >= 20).sum()) > 0  # generated tokens survive the guard


def test_sinks_and_recent_window_are_kept(tiny_llama):
    _, cache = run(tiny_llama, torch.randint(3, 128, (1, 6)), new=60, budget=16, interval=4, pin_prompt=False,
                   sink_tokens=3, recent_window=5)
    layer = cache.layers[1]
    pos = layer.pos[0, :, : layer.length]
    last = int(layer.next_pos[0])
    for head in pos:
        held = set(head.tolist())
        assert {0, 1, 2} <= held
        # the window is protected at round time; tokens appended since the round are held too
        assert set(range(last - 5, last)) <= held


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="protected tokens"):
        ts.TriAttentionConfig(budget=8, sink_tokens=4, recent_window=4)
    with pytest.raises(ValueError, match="budget"):
        ts.TriAttentionConfig(budget=0)
    with pytest.raises(ValueError, match="granularity"):
        ts.TriAttentionConfig(granularity="per_token")


def calibration_for(model, **meta_overrides):
    info = ts.describe_model(model)
    shape = (info.num_layers, info.num_heads, info.rope.freq_count)
    meta = model_metadata(info, token_count=10)
    meta.update(meta_overrides)
    return ts.CalibrationStats(torch.ones(shape), torch.zeros(shape), torch.full(shape, 2.0),
                               torch.zeros(info.num_layers, info.num_heads, 0), meta)


def test_wrong_calibration_files_are_rejected(tiny_llama):
    other_heads = tiny_model("llama", num_attention_heads=8, num_key_value_heads=2)
    with pytest.raises(CalibrationMismatchError, match="num_heads"):
        ts.TriAttentionCache(tiny_llama, calibration=calibration_for(other_heads), budget=16)
    other_theta = tiny_model("llama", rope_theta=50000.0)
    with pytest.raises(CalibrationMismatchError, match="rope_theta"):
        ts.TriAttentionCache(tiny_llama, calibration=calibration_for(other_theta), budget=16)
    with pytest.raises(CalibrationMismatchError, match="model_type"):
        ts.TriAttentionCache(tiny_model("qwen2"), calibration=calibration_for(tiny_llama), budget=16)
    tiny_llama.config._name_or_path = "org/tiny-llama"
    with pytest.raises(CalibrationMismatchError, match="model_name"):
        ts.TriAttentionCache(tiny_llama, calibration=calibration_for(tiny_llama, model_name="other/model"),
                             budget=16)
    ts.TriAttentionCache(tiny_llama, calibration=calibration_for(tiny_llama), budget=16)  # the right one loads


def test_unsupported_rope_type_is_refused():
    model = tiny_model("llama", rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(UnsupportedModelError, match="dynamic"):
        ts.TriAttentionCache(model, budget=16)


def test_calibration_file_roundtrip_and_offline_generation(tiny_llama, tmp_path):
    stats = calibration_for(tiny_llama)
    path = str(tmp_path / "calib.safetensors")
    stats.save(path)
    loaded = ts.CalibrationStats.load(path)
    assert torch.equal(loaded.q_abs_mean, stats.q_abs_mean) and loaded.metadata["num_heads"] == 4
    out, cache = run(tiny_llama, torch.randint(3, 128, (1, 8)), new=40, calibration=path, budget=12, interval=4)
    assert cache.summary()["calibration"] == "offline" and cache.rounds > 0


def test_authors_pt_converter(tmp_path):
    stats = {}
    for layer in range(2):
        for head in range(3):
            stats[f"layer{layer:02d}_head{head:02d}"] = {
                "q_mean_real": torch.full((4,), float(layer)), "q_mean_imag": torch.full((4,), float(head)),
                "q_abs_mean": torch.full((4,), 9.0)}
    meta = {"rope_style": "half", "head_dim": 8, "sampled_heads": [[l, h] for l in range(2) for h in range(3)]}
    torch.save({"metadata": meta, "stats": stats}, tmp_path / "authors.pt")
    loaded = ts.CalibrationStats.load(str(tmp_path / "authors.pt"))
    assert loaded.q_mean_real.shape == (2, 3, 4)
    assert loaded.q_mean_real[1, 2, 0] == 1.0 and loaded.q_mean_imag[1, 2, 0] == 2.0
    assert loaded.metadata["rope_style"] == "half"


def test_online_statistics_are_the_prompt_query_means(tiny_llama):
    """Online stats equal the pre-RoPE queries captured by a hook on q_proj (Llama has no q_norm)."""
    ids = torch.randint(3, 128, (1, 9))
    captured = {}
    handle = tiny_llama.model.layers[1].self_attn.q_proj.register_forward_hook(
        lambda mod, args, out: captured.setdefault("q", out.detach()))
    cache = ts.TriAttentionCache(tiny_llama, budget=64)
    with ts.use_triattention_attention(tiny_llama):
        tiny_llama(input_ids=ids, past_key_values=cache, use_cache=True)
    handle.remove()
    q = captured["q"].view(1, 9, 4, 16).transpose(1, 2).double()  # [B, Hq, T, D]
    means = cache.online.accumulators[1].means()
    torch.testing.assert_close(means["q_mean_real"][0, 0], q[0, :, :, :8].mean(1).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(means["q_abs_mean"][0, 0], torch.sqrt(q[0, :, :, :8] ** 2 + q[0, :, :, 8:] ** 2)
                               .mean(1).float(), rtol=1e-5, atol=1e-5)


def test_attention_implementation_registers_for_from_config_and_set():
    model = tiny_model("llama", attn="sdpa")
    model.set_attn_implementation("triattention")
    assert model.config._attn_implementation == "triattention"
    out, _ = run(model, torch.randint(3, 128, (1, 5)), new=5, budget=32)
    assert out.shape == (1, 10)


def test_sampling_runs_and_respects_budget(tiny_llama):
    torch.manual_seed(0)
    ids = torch.randint(3, 128, (2, 6))
    out, cache = ts.generate(tiny_llama, ids, budget=12, interval=4, max_new_tokens=40, min_new_tokens=40,
                             do_sample=True, temperature=0.8, top_p=0.95, return_cache=True)
    assert out.shape == (2, 46) and cache.rounds > 0 and max(cache.physical_lengths()) <= 16


def test_accelerate_dispatch_with_hooks_gives_same_tokens(tiny_llama):
    from accelerate import dispatch_model

    ids = torch.randint(3, 128, (1, 8))
    ref, _ = run(tiny_llama, ids, new=40, budget=12, interval=4)
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    dispatched = dispatch_model(tiny_llama, device_map=device_map, force_hooks=True,
                                skip_keys=tiny_llama._skip_keys_device_placement)
    assert hasattr(dispatched.model.layers[0], "_hf_hook")
    out, cache = run(dispatched, ids, new=40, budget=12, interval=4)
    assert torch.equal(out, ref) and cache.rounds > 0


def test_kernel_loading_falls_back_to_reference_with_a_log_line(caplog, monkeypatch):
    from triattention_sampler import kernel_loading

    monkeypatch.setattr(kernel_loading, "_LOADED", {})
    monkeypatch.delenv("LOCAL_KERNELS", raising=False)
    monkeypatch.setenv("TRIATTENTION_KERNEL_REPO", "nobody/does-not-exist")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.INFO):
        ops = kernel_loading.load_ops()
    import triattention

    assert ops is triattention
    assert "could not load hub kernel nobody/does-not-exist" in caplog.text
