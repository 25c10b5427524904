"""Mechanics of the issue-9 options: method specs, layer stride, position segments, layer aggregation,
online refresh / decay / mixing, SnapKV settings (tiny random models and plain tensors; seconds)."""
import pytest
import torch

import triattention_sampler as ts
from triattention import QueryFrequencyStats, combine_layers, segment_quota_scores
from triattention_sampler.cli import main
from triattention_sampler.evaluation.quality import build_cache
from triattention_sampler.policies import SnapKVPolicy, StreamingLLMPolicy, make_policy, parse_method, split_methods

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
    assert parse_method("triattention-online[online_refresh=true,online_decay=0.5,granularity=union]") == (
        "triattention-online", {"online_refresh": True, "online_decay": 0.5, "granularity": "union"})
    policy, overrides = make_policy("snapkv[kernel_size=1,query_window=16,recent_window=32]")
    assert isinstance(policy, SnapKVPolicy) and (policy.kernel_size, policy.query_window) == (1, 16)
    assert overrides == {"recent_window": 32}
    policy, overrides = make_policy("streamingllm[sink_tokens=8]")  # a spec setting wins over the method's
    assert isinstance(policy, StreamingLLMPolicy) and overrides == {"sink_tokens": 8}
    with pytest.raises(ValueError, match="unknown setting 'kernel_size'"):
        make_policy("triattention[kernel_size=3]")
    with pytest.raises(ValueError, match="unknown method"):
        make_policy("nope[budget=3]")
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
    (["eval", "--methods", "triattention[online_weight=2]"], "online_weight must be in [0, 1]"),
    (["generate", "hi", "--set", "bogus=1"], "--set 'bogus=1'"),
    (["generate", "hi", "--set", "position_segments=-1"], "position_segments must be a non-negative"),
])
def test_cli_rejects_bad_settings(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_config_validation_of_new_fields():
    with pytest.raises(ValueError, match="online_decay only acts with online_refresh"):
        ts.TriAttentionConfig(budget=16, online_decay=0.5)
    with pytest.raises(ValueError, match="layer_aggregation"):
        ts.TriAttentionConfig(budget=16, layer_aggregation="median")
    with pytest.raises(ValueError, match="score_layer_stride"):
        ts.TriAttentionConfig(budget=16, score_layer_stride=0)


# -- selection helpers -------------------------------------------------------------------------------------
def test_segment_quotas_keep_the_same_fraction_of_every_segment():
    g = torch.Generator().manual_seed(0)
    n, segments = 400, 4
    scores = torch.randn(2, 3, n, generator=g)
    scores[..., :300] += 6.0  # the old three quarters score much higher: plain top-k would starve the rest
    scores[..., :10] = float("-inf")  # non-candidates (protected)
    pos = torch.arange(n).expand(2, 3, n)
    quota = segment_quota_scores(scores, pos, segments)
    assert torch.isneginf(quota[..., :10]).all() and torch.isfinite(quota[..., 10:]).all()
    keep = quota.topk(130, dim=-1).indices
    seg = ((pos - 10) * segments // (n - 10)).clamp(0, segments - 1)
    counts = torch.stack([(seg.gather(-1, keep) == s).sum(-1) for s in range(segments)], -1)  # [2, 3, S]
    sizes = torch.stack([((seg == s) & torch.isfinite(scores)).sum(-1) for s in range(segments)], -1)
    assert ((counts - sizes * 130 / (n - 10)).abs() <= 1).all()  # proportional to segment size
    for b in range(2):  # inside a segment the best scores are the ones kept
        for s in range(segments):
            members = ((seg[b, 0] == s) & torch.isfinite(scores[b, 0])).nonzero()[:, 0]
            best = members[scores[b, 0, members].topk(int(counts[b, 0, s])).indices]
            assert set(best.tolist()) == set(k for k in keep[b, 0].tolist() if seg[b, 0, k] == s)
    plain = scores.topk(130, dim=-1).indices
    assert (plain >= 300).sum() == 0  # without quotas the recent quarter is dropped entirely


def test_layer_aggregation_max():
    a, b = torch.randn(1, 2, 5), torch.randn(1, 2, 5)
    out = combine_layers([a, b], "per_head", layer_aggregation="max")
    assert torch.equal(out[0], torch.maximum(a, b)) and torch.equal(out[1], out[0])
    assert torch.equal(combine_layers([a, b], "per_head")[0], (a + b) / 2)
    with pytest.raises(ValueError, match="layer_aggregation"):
        combine_layers([a], "per_head", layer_aggregation="sum")


# -- cache mechanics ------------------------------------------------------------------------------------------
def test_layer_stride_scores_only_every_kth_layer_and_shares_the_decision():
    model = tiny_model("llama", num_hidden_layers=6)
    calls = []

    class Spy(ts.TriAttentionPolicy):
        def round_scores(self, cache, layer_ids, protected):
            calls.extend(layer_ids)
            return super().round_scores(cache, layer_ids, protected)

    cache = ts.TriAttentionCache(model, budget=16, interval=8, score_layer_stride=4, policy=Spy())
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


def test_position_segments_spread_the_kept_tokens(tiny_llama):
    base = feed(tiny_llama, ts.TriAttentionCache(tiny_llama, budget=32, interval=32, policy=StreamingLLMPolicy()),
                65)
    seg = feed(tiny_llama, ts.TriAttentionCache(tiny_llama, budget=32, interval=32, position_segments=4,
                                                policy=StreamingLLMPolicy()), 65)
    assert base.rounds == seg.rounds == 1
    # The prompt (1 token) is pinned; StreamingLLM keeps the newest 31 of the other 63 — with 4 segments
    # every quarter of positions 1..63 keeps about half of its tokens instead.
    kept_base = base.layers[0].pos[0, 0, :32]
    kept_seg = seg.layers[0].pos[0, 0, :32]
    assert kept_base[1:].min() == 33
    quarters = torch.bincount(((kept_seg[1:] - 1) * 4 // 63).clamp(0, 3), minlength=4)
    sizes = torch.tensor([16, 16, 16, 15])  # positions 1..63 cut into 4 equal spans
    assert ((quarters - sizes * 31 / 63).abs() <= 1).all(), quarters


def test_online_refresh_keeps_collecting_and_decay_forgets(tiny_llama):
    frozen = feed(tiny_llama, ts.TriAttentionCache(tiny_llama, budget=16, interval=8), 60)
    refresh = feed(tiny_llama, ts.TriAttentionCache(tiny_llama, budget=16, interval=8, online_refresh=True), 60)
    assert frozen._online[0].count.item() == 24  # prompt = queries before the first round (1 + 23 decoded)
    assert refresh._online[0].count.item() == 60 and refresh.collecting
    assert not torch.equal(frozen._stats_for(0, torch.device("cpu"))["q_mean_real"],
                           refresh._stats_for(0, torch.device("cpu"))["q_mean_real"])
    decayed = feed(tiny_llama, ts.TriAttentionCache(tiny_llama, budget=16, interval=8, online_refresh=True,
                                                    online_decay=0.5), 60)
    assert decayed.rounds == refresh.rounds
    assert decayed._online[0].count.item() < refresh._online[0].count.item()
    assert "refreshed (decay 0.5)" in decayed.summary()["calibration"]


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


def test_online_weight_mixes_offline_and_online_means(tiny_llama):
    from test_cache import calibration_for

    calib = calibration_for(tiny_llama)  # q_mean_real 1, q_mean_imag 0, q_abs_mean 2
    online = feed(tiny_llama, ts.TriAttentionCache(tiny_llama, budget=16, interval=8), 30)
    mixed = feed(tiny_llama, ts.TriAttentionCache(tiny_llama, calibration=calib, budget=16, interval=8,
                                                  online_weight=0.25), 30)
    cpu = torch.device("cpu")
    for key, offline_value in (("q_mean_real", 1.0), ("q_mean_imag", 0.0), ("q_abs_mean", 2.0)):
        want = 0.75 * offline_value + 0.25 * online._stats_for(1, cpu)[key]
        torch.testing.assert_close(mixed._stats_for(1, cpu)[key], want)
    full_online = feed(tiny_llama, ts.TriAttentionCache(tiny_llama, calibration=calib, budget=16, interval=8,
                                                        online_weight=1.0), 30)
    assert torch.equal(full_online.layers[0].pos, online.layers[0].pos)  # weight 1 = online only
    assert mixed.summary()["calibration"] == "offline+online(weight 0.25)"


def test_snapkv_kernel_one_is_plain_window_attention(tiny_llama):
    cache = feed(tiny_llama, build_cache(tiny_llama, "snapkv[kernel_size=1,query_window=4]", 16, 8), 30)
    assert cache.rounds >= 1 and cache.query_window == 4
    assert cache._recent_queries[0][0].shape[2] == 4


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


def test_softmax_normalization_gives_attention_shares(tiny_llama):
    cache = feed(tiny_llama, ts.TriAttentionCache(tiny_llama, budget=16, interval=8,
                                                  score_normalization="softmax", group_aggregation="mean"), 23)
    layer = cache.layers[0]
    protected = cache._protected(layer, layer.length)
    shares = cache.policy.layer_scores(cache, 0, protected)  # [B, Hkv, N], mean over the group
    candidates = layer.valid[:, :, :layer.length] & ~protected
    torch.testing.assert_close(shares.masked_fill(~candidates, 0).sum(-1), torch.ones(1, 2))  # sums to 1
    assert torch.isneginf(shares[~candidates]).all()
    feed(tiny_llama, cache, 30, seed=1)
    assert cache.rounds >= 2 and max(cache.physical_lengths()) <= 24
    with pytest.raises(ValueError, match="score_normalization"):
        ts.TriAttentionConfig(budget=16, score_normalization="rank")


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
        layers = list(cache.info.pruned_layers)
        protected = {i: cache._protected(cache.layers[i], cache.layers[i].length) for i in layers}
        batched = cache.policy.round_scores(cache, layers, protected)
        for i, got in zip(layers, batched):
            alone = cache.policy.round_scores(cache, [i], protected)[0]
            torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-5)


def test_recommended_setting_is_reachable_by_name():
    policy, overrides = make_policy("triattention-recommended")
    assert isinstance(policy, ts.TriAttentionPolicy) and overrides == {"score_layer_stride": 4}
    assert ts.preset("recommended").score_layer_stride == 4 and ts.preset("paper") == ts.TriAttentionConfig()
    assert make_policy("triattention-recommended[score_layer_stride=2]")[1] == {"score_layer_stride": 2}
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
    original = cache._compact_nested

    def recording(*args):
        original(*args)
        seen.append(cache.physical_lengths())

    cache._compact_nested = recording
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
    assert make_policy("triattention-quality")[1] == {"layer_budget_slope": -0.5}
    assert ts.preset("quality").layer_budget_slope == -0.5
    model = tiny_model("llama", num_hidden_layers=4)
    cache = feed(model, build_cache(model, "triattention-quality", 16, 8), 60)
    assert cache.calibration is None and cache.rounds >= 2
    assert [cache.layer_budget[i] for i in range(4)] == [8, 13, 19, 24]


def test_position_segments_also_apply_with_layer_budgets():
    model = tiny_model("llama", num_hidden_layers=4)

    def kept(segments):
        cache = ts.TriAttentionCache(model, budget=32, interval=32, layer_budget_slope=0.5,
                                     position_segments=segments, policy=StreamingLLMPolicy())
        feed(model, cache, 49)  # one round, when the budget-16 layer holds 48 tokens
        assert cache.rounds == 1
        layer = cache.layers[cache._trigger_layer]  # keeps the pinned token + 15 of positions 1..47
        return layer.pos[0, 0, 1:16]

    assert int(kept(0).min()) == 33  # the newest 15 only
    quarters = torch.bincount(((kept(4) - 1) * 4 // 47).clamp(0, 3), minlength=4)
    assert (quarters >= 3).all(), quarters  # every quarter of the positions keeps its share
