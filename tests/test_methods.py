"""Method specs and the registry, layer stride, per-layer budgets, SnapKV settings, evaluation helpers (tiny
random models and plain tensors; seconds)."""
import pytest
import torch

import triattention_sampler as ts
from triattention import QueryFrequencyStats, combine_layers
from triattention_sampler.cli import main
from triattention_sampler.generate import build_cache
from triattention_sampler.cache.rounds import layer_view
from triattention_sampler.scorers import SnapKVScorer, StreamingLLMScorer, make_scorer, parse_method, split_methods

from conftest import tiny_model


def feed(model, cache, n_tokens, seed=0, chunk=1):
    """Stream random tokens through the decode path (1 token per forward after a 1-token prefill)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (1, n_tokens), generator=g)
    with ts.use_triattention_attention(model), torch.no_grad():
        for start in range(0, n_tokens, chunk):
            model(input_ids=ids[:, start:start + chunk], past_key_values=cache, use_cache=True)
    return cache


# -- method specs ------------------------------------------------------------------------------------------
def test_method_specs_split_and_parse():
    assert split_methods("triattention,snapkv[kernel_size=1,recent_window=32], random") == [
        "triattention", "snapkv[kernel_size=1,recent_window=32]", "random"]
    assert parse_method("triattention-online[pin_prompt=false,aggregation=max,granularity=union]") == (
        "triattention-online", {"pin_prompt": False, "aggregation": "max", "granularity": "union"})
    scorer, implied, spec = make_scorer("snapkv[kernel_size=1,query_window=16,recent_window=32]")
    assert isinstance(scorer, SnapKVScorer) and (scorer.kernel_size, scorer.query_window) == (1, 16)
    assert implied == {} and spec == {"recent_window": 32}
    scorer, implied, spec = make_scorer("streamingllm[sink_tokens=8]")  # a spec setting wins over the method's
    assert isinstance(scorer, StreamingLLMScorer) and implied == {"sink_tokens": 4} and spec == {"sink_tokens": 8}
    scorer, _, _ = make_scorer("triattention[aggregation=max,disable_mlr=true]")  # scorer settings
    assert (scorer.aggregation, scorer.disable_mlr) == ("max", True)
    with pytest.raises(ValueError, match="unknown setting 'kernel_size'"):
        make_scorer("triattention[kernel_size=3]")
    with pytest.raises(ValueError, match="unknown method"):
        make_scorer("nope[budget=3]")
    with pytest.raises(ValueError, match="key=value"):
        parse_method("triattention[stride]")


def test_build_cache_applies_spec_settings_over_caller_overrides(tiny_llama):
    cache = build_cache(tiny_llama, "triattention-online[score_layer_stride=2,recent_window=4]", 32, 8,
                        recent_window=2)
    assert cache.config.score_layer_stride == 2 and cache.config.recent_window == 4
    assert cache.calibration is None
    cache = build_cache(tiny_llama, "streamingllm", 32, 8)
    assert cache.config.sink_tokens == 4  # what the method implies ...
    assert build_cache(tiny_llama, "streamingllm", 32, 8, sink_tokens=8).config.sink_tokens == 8  # ... a flag beats
    assert build_cache(tiny_llama, "streamingllm[sink_tokens=2]", 32, 8, sink_tokens=8).config.sink_tokens == 2


@pytest.mark.parametrize("argv, message", [
    (["eval", "--methods", "snapkv[kernel_size=2]"], "kernel_size a positive odd number"),
    (["eval", "--methods", "triattention[score_layer_stride=2,granularity=per_layer_head]"], "needs granularity"),
    (["eval", "--methods", "triattention[aggregation=median]"], "aggregation must be one of"),
    (["generate", "hi", "--set", "bogus=1"], "--set 'bogus=1'"),
    (["generate", "hi", "--set", "prefill_chunk=-1"], "prefill_chunk must be non-negative"),
    (["generate", "hi", "--set", "pin_prompt=maybe"], "pin_prompt must be True or False"),
])
def test_cli_rejects_bad_settings(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="score_layer_stride"):
        ts.TriAttentionConfig(budget=16, score_layer_stride=0)
    with pytest.raises(TypeError, match="pin_prompt must be True or False, got str 'no'"):
        ts.TriAttentionConfig(budget=16, pin_prompt="no")
    with pytest.raises(TypeError, match="budget must be an integer, got float 64.0"):
        ts.TriAttentionConfig(budget=64.0)
    with pytest.raises(TypeError, match="layer_budget_slope must be a number"):
        ts.TriAttentionConfig(budget=16, layer_budget_slope="a")
    assert len(ts.TriAttentionConfig.field_names()) <= 15


# -- selection helpers -------------------------------------------------------------------------------------
# -- cache mechanics ------------------------------------------------------------------------------------------
def test_layer_stride_scores_only_every_kth_layer_and_shares_the_decision():
    model = tiny_model("llama", num_hidden_layers=6)
    calls = []

    class Spy(ts.TriAttentionScorer):
        def score_layers(self, views, ops):
            calls.extend(v.index for v in views)
            return super().score_layers(views, ops)

    cache = ts.TriAttentionCache(model, budget=16, interval=8, score_layer_stride=4, scorer=Spy())
    assert cache.scored_layers() == [2]
    feed(model, cache, 40)
    assert cache.rounds >= 2 and set(calls) == {2}
    layers = cache.layers
    for layer in layers[1:]:
        assert torch.equal(layer.pos[:, :, :layer.length], layers[0].pos[:, :, :layers[0].length])
    assert cache.summary()["scored_layers"] == 1 and cache.score_seconds > 0
    stride2 = ts.TriAttentionCache(model, budget=16, interval=8, score_layer_stride=2)
    assert stride2.scored_layers() == [1, 3, 5]


def test_layer_stride_one_equals_the_paper_default(tiny_llama):
    a = feed(tiny_llama, ts.TriAttentionCache(tiny_llama, budget=16, interval=8), 50)
    b = feed(tiny_llama, ts.TriAttentionCache(tiny_llama, budget=16, interval=8, score_layer_stride=1), 50)
    assert torch.equal(a.layers[0].pos, b.layers[0].pos)


def test_query_stats_scale_keeps_means_and_reweights_later_updates():
    q1, q2 = torch.randn(1, 2, 5, 8, dtype=torch.float64), torch.randn(1, 2, 5, 8, dtype=torch.float64)
    stats = QueryFrequencyStats(1, 1, 2, 8)
    stats.update(0, q1)
    before = stats.means()["q_mean_real"].clone()
    stats.scale_(0.25)
    torch.testing.assert_close(stats.means()["q_mean_real"], before)
    stats.update(0, q2)
    want = (0.25 * q1[..., :4].sum(2) + q2[..., :4].sum(2)) / (0.25 * 5 + 5)
    torch.testing.assert_close(stats.means()["q_mean_real"][:, 0], want.float())


def test_snapkv_kernel_one_is_plain_window_attention(tiny_llama):
    cache = feed(tiny_llama, build_cache(tiny_llama, "snapkv[kernel_size=1,query_window=4]", 16, 8), 30)
    assert cache.rounds >= 1 and cache.query_window.size == 4
    assert cache.query_window.get(0).queries.shape[2] == 4


# -- evaluation helpers ----------------------------------------------------------------------------------------
def test_paired_difference_uses_block_means():
    from triattention_sampler.evaluation.metrics import paired_difference

    a = torch.arange(256, dtype=torch.float32) % 64 / 64.0  # identical blocks: the difference has zero SE
    b = torch.zeros(256)
    out = paired_difference(a, b, start=0, block=64)
    assert out["blocks"] == 4 and abs(out["diff"] - float(a.mean())) < 1e-12 and out["se"] == 0.0
    c = torch.cat([torch.zeros(128), torch.ones(128)])
    out = paired_difference(c, b, start=0, block=64)  # block means 0, 0, 1, 1 -> SE = std / sqrt(4)
    assert abs(out["se"] - float(torch.tensor([0.0, 0, 1, 1], dtype=torch.float64).std() / 2)) < 1e-12
    assert paired_difference(c, b, start=200, block=64)["blocks"] == 0


def test_scoring_cost_counts_layer_stride_and_snapkv_window():
    from triattention_sampler.evaluation.cost import scoring_cost

    model = tiny_model("llama", num_hidden_layers=8)
    info = ts.describe_model(model)
    full = scoring_cost("triattention", info, 100)
    strided = scoring_cost("triattention-online[score_layer_stride=4]", info, 100)
    assert full["scored_layers"] == 8 and strided["scored_layers"] == 2
    assert strided["bytes"] == full["bytes"] / 4 and strided["flops"] == full["flops"] / 4
    keys = info.num_kv_heads * 100 * info.head_dim * 2
    snap = scoring_cost("snapkv[query_window=32]", info, 100)
    assert snap["bytes"] == 8 * (keys + info.num_heads * 32 * info.head_dim * 2)
    assert snap["flops"] == 8 * info.num_heads * 32 * 100 * (2 * info.head_dim + 5)
    assert scoring_cost("random", info, 100)["bytes"] == 0


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_batched_round_scores_equal_layer_by_layer(model_type):
    """All scored layers in one round_weights call == one call per layer (Gemma3 mixes two RoPEs)."""
    extra = dict(sliding_window=8, layer_types=["sliding_attention", "full_attention"] * 2, head_dim=16) \
        if model_type == "gemma3_text" else {}
    model = tiny_model(model_type, num_hidden_layers=4, **extra)
    for calibration in (None, "file"):
        if calibration == "file":
            from test_cache import calibration_for
            calibration = calibration_for(model)
        cache = feed(model, ts.TriAttentionCache(model, calibration=calibration, budget=16, interval=8), 23)
        views = [layer_view(cache, i, torch.zeros_like(cache.layers[i].valid[:, :, :cache.layers[i].length]))
                 for i in cache.info.pruned_layers]
        batched = cache.scorer.score_layers(views, cache.ops)
        for view, got in zip(views, batched):
            torch.testing.assert_close(got, cache.scorer.score(view, cache.ops), rtol=1e-5, atol=1e-5)


def test_recommended_setting_is_reachable_by_name():
    scorer, implied, _ = make_scorer("triattention-recommended")
    assert isinstance(scorer, ts.TriAttentionScorer) and implied == {"score_layer_stride": 4, "prefill_chunk": 4096}
    assert ts.preset("recommended").score_layer_stride == 4 and ts.preset("paper") == ts.TriAttentionConfig()
    assert make_scorer("triattention-recommended[score_layer_stride=2]")[2] == {"score_layer_stride": 2}
    model = tiny_model("llama", num_hidden_layers=8)
    cache = build_cache(model, "triattention-recommended", 16, 8)
    assert cache.scored_layers() == [2, 6] and cache.calibration is None
    feed(model, cache, 40)
    assert cache.rounds >= 2 and cache.summary()["scored_layers"] == 2


def test_layer_budgets_follow_the_slope_and_keep_the_mean():
    model = tiny_model("llama", num_hidden_layers=4)
    cfg = ts.TriAttentionConfig(budget=16, interval=8, layer_budget_slope=0.5)
    assert cfg.layer_budgets(4) == [24, 19, 13, 8] and sum(cfg.layer_budgets(4)) == 64
    seen = []
    cache = ts.TriAttentionCache(model, config=cfg)
    cache.add_round_callback(lambda c: seen.append(c.physical_lengths()))
    feed(model, cache, 80)
    assert cache.rounds == len(seen) >= 5
    assert seen[-1] == [24, 19, 13, 8]  # every layer back to its own budget
    for lengths in seen:
        assert all(n <= b for n, b in zip(lengths, [24, 19, 13, 8]))
    assert all(n <= b + 8 for n, b in zip(cache.physical_lengths(), [24, 19, 13, 8]))
    for layer, b in zip(cache.layers, [24, 19, 13, 8]):  # real tokens only, positions unique, temporal order
        pos = layer.pos[0, 0, :layer.length]
        assert bool(layer.valid[:, :, :layer.length].all()) and bool((pos[1:] > pos[:-1]).all())
    with pytest.raises(ValueError, match="needs granularity 'per_head'"):
        ts.TriAttentionConfig(budget=16, layer_budget_slope=0.5, granularity="union")
    with pytest.raises(ValueError, match="layer_budget_slope must be in"):
        ts.TriAttentionConfig(budget=16, layer_budget_slope=1.0)


def test_layer_budgets_with_zero_slope_are_the_shared_path(tiny_llama):
    assert ts.TriAttentionConfig(budget=16).layer_budgets(3) == [16, 16, 16]
    a = feed(tiny_llama, ts.TriAttentionCache(tiny_llama, budget=16, interval=8), 50)
    b = feed(tiny_llama, ts.TriAttentionCache(tiny_llama, budget=16, interval=8, layer_budget_slope=0.0), 50)
    assert torch.equal(a.layers[1].pos, b.layers[1].pos)


def test_quality_preset_is_reachable_by_name():
    assert make_scorer("triattention-quality")[1] == {"layer_budget_slope": -0.5, "prefill_chunk": 4096}
    assert ts.preset("quality").layer_budget_slope == -0.5
    model = tiny_model("llama", num_hidden_layers=4)
    cache = feed(model, build_cache(model, "triattention-quality", 16, 8), 60)
    assert cache.calibration is None and cache.rounds >= 2
    assert [cache.layers[i].layout.budget for i in range(4)] == [8, 13, 19, 24]
