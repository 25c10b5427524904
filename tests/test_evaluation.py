"""Metrics with known answers and each scorer's mechanics on a tiny random Llama (no real model)."""
import math

import pytest
import torch

from conftest import tiny_model
from triattention_sampler import TriAttentionCache, TriAttentionConfig
from triattention_sampler.evaluation.metrics import summarize, token_metrics
from triattention_sampler.cache.rounds import layer_view
from triattention_sampler.evaluation.quality import feed_schedule, stream_quality
from triattention_sampler.generate import build_cache
from triattention_sampler.scorers import (METHODS, KeyNormScorer, RandomScorer, SnapKVScorer, StreamingLLMScorer,
                                          make_scorer)


def scores_of(cache, scorer, idx=0, protected=None):
    """What ``scorer`` gives layer ``idx`` of ``cache`` now (nothing protected by default)."""
    layer = cache.layers[idx]
    if protected is None:
        protected = torch.zeros_like(layer.valid[:, :, :layer.length])
    return scorer.score(layer_view(cache, idx, protected), cache.ops)


def test_identical_runs_give_zero_kl_and_full_agreement():
    logp = torch.log_softmax(torch.randn(7, 11), -1)
    targets = torch.randint(0, 11, (7,))
    s = summarize(token_metrics(logp, logp.clone(), targets))
    assert s["kl"] == pytest.approx(0.0, abs=1e-7) and s["top1"] == 1.0 and s["nll"] == pytest.approx(s["nll_ref"])


def test_nll_and_kl_of_known_distributions():
    v = 8
    uniform = torch.full((3, v), -math.log(v))
    peaked = torch.log(torch.tensor([[0.5] + [0.5 / (v - 1)] * (v - 1)] * 3))
    m = token_metrics(peaked, uniform, torch.tensor([0, 1, 2]))
    assert torch.allclose(m["nll"], torch.full((3,), math.log(v)))
    assert m["nll_ref"][0].item() == pytest.approx(math.log(2))
    p = peaked[0].exp()
    assert m["kl"][0].item() == pytest.approx(float((p * (p.log() + math.log(v))).sum()), rel=1e-5)
    assert m["agree"].tolist() == [1.0, 1.0, 1.0]  # both argmax 0 (uniform argmax picks index 0)
    assert summarize(m, start=2)["tokens"] == 1


def test_feed_schedule_fires_rounds_like_token_by_token():
    spans = feed_schedule(100, 8)
    assert spans[0] == (0, 1) and spans[1] == (1, 8) and spans[2] == (8, 16) and spans[-1][1] == 100
    assert feed_schedule(5, 1) == [(i, i + 1) for i in range(5)]


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_stays_within_budget(model, method):
    torch.manual_seed(0)
    ids = torch.randint(3, 128, (1, 90))
    cache = build_cache(model, method, 32, 16)
    with torch.no_grad():
        model(input_ids=ids[:, :1], past_key_values=cache, use_cache=True)
        for t in range(1, 90, 8):
            model(input_ids=ids[:, t:t + 8], past_key_values=cache, use_cache=True)
    s = cache.summary()
    assert s["logical_length"] == 90
    if method == "full":
        assert s["rounds"] == 0 and s["physical_length_pruned_layers"] == 90
    else:  # every pruned layer within its own budget (per-layer budgets for triattention-quality) + interval
        assert s["rounds"] >= 2
        for i in cache.info.pruned_layers:
            budget = cache.layers[i].layout.budget
            assert budget <= cache.layers[i].length < budget + 16 + 8
        budgets = [cache.layers[i].layout.budget for i in cache.info.pruned_layers]
        assert sum(budgets) == 32 * len(budgets)


def _kept_positions(model, scorer, budget=24, interval=8, n=41, **cfg):
    torch.manual_seed(1)
    ids = torch.randint(3, 128, (1, n))
    cache = TriAttentionCache(model, TriAttentionConfig(budget=budget, interval=interval, **cfg), scorer=scorer)
    with torch.no_grad():
        for t in range(n):
            model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True)
    layer = cache.layers[0]
    return cache, layer.pos[:, :, : layer.length], layer


def test_streamingllm_keeps_sinks_and_most_recent(model):
    cache, pos, layer = _kept_positions(model, StreamingLLMScorer(), sink_tokens=4)
    # rounds fire when 32 tokens are held; the last one (before token 40) kept 4 sinks + the 20 newest (20..39)
    expected = list(range(4)) + list(range(20, 41))
    assert pos[0, 0].tolist() == expected and pos[0, 1].tolist() == expected


def test_random_scorer_is_seeded(model):
    _, a, _ = _kept_positions(model, RandomScorer(seed=3))
    _, b, _ = _kept_positions(model, RandomScorer(seed=3))
    _, c, _ = _kept_positions(model, RandomScorer(seed=4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_knorm_scores_are_negative_key_norms(model):
    cache, _, layer = _kept_positions(model, KeyNormScorer())
    n = layer.length
    scores = scores_of(cache, KeyNormScorer())
    assert torch.allclose(scores, -layer.keys[:, :, :n].norm(dim=-1))


def test_snapkv_records_query_window_and_scores_by_attention(model):
    cache, _, layer = _kept_positions(model, SnapKVScorer(query_window=4, kernel_size=1))
    assert cache.query_window.size == 4
    recorded = cache.query_window.get(0)
    q, qpos = recorded.queries, recorded.positions
    assert q.shape[2] == 4 and qpos[0].tolist() == [37, 38, 39, 40]
    n = layer.length
    scores = scores_of(cache, cache.scorer)
    keys = layer.keys[:, :, :n]
    logits = torch.einsum("bhwd,bhnd->bhwn", q.view(1, 2, 2 * 4, -1), keys) / keys.shape[-1] ** 0.5
    causal = layer.pos[:, :, None, :n] <= qpos.repeat(1, 2)[:, None, :, None]
    attn = torch.softmax(logits.masked_fill(~causal, float("-inf")), -1).mean(2)
    assert torch.allclose(scores, attn, atol=1e-5)
    assert torch.allclose(scores.sum(-1), torch.ones(1, 2), atol=1e-4)  # attention rows sum to 1
    # no query window -> nothing recorded
    cache2, _, _ = _kept_positions(model, KeyNormScorer())
    assert cache2.query_window is None


def test_chunked_streaming_equals_token_by_token(model):
    torch.manual_seed(2)
    ids = torch.randint(3, 128, (73,))
    results = []
    for chunk in (1, 8):
        runs = {m: build_cache(model, m, 16, 8) for m in ("triattention-online", "snapkv", "streamingllm")}
        results.append(stream_quality(model, ids, runs, chunk=chunk, progress=False))
    for m in ("triattention-online", "snapkv", "streamingllm"):
        for k in ("kl", "nll", "agree"):
            assert torch.allclose(results[0][m][k], results[1][m][k], atol=1e-4), (m, k)
        assert results[0]["_summary"][m]["rounds"] == results[1]["_summary"][m]["rounds"] >= 5
    with pytest.raises(ValueError, match="must divide"):
        stream_quality(model, ids, {"x": build_cache(model, "random", 20, 8)}, chunk=8, progress=False)


def test_full_method_matches_reference_exactly(model):
    ids = torch.randint(3, 128, (40,))
    res = stream_quality(model, ids, {"full": build_cache(model, "full", 16, 8)}, chunk=8, progress=False)
    assert float(res["full"]["kl"].max()) < 1e-6 and float(res["full"]["agree"].min()) == 1.0


def test_ablation_scorers_change_scores(model):
    cache, _, layer = _kept_positions(model, make_scorer("triattention")[0])
    base = scores_of(cache, make_scorer("triattention")[0])
    for name in ("tri-no-norm", "tri-linear", "tri-no-trig", "tri-no-mlr"):
        other = scores_of(cache, make_scorer(name)[0])
        assert other.shape == base.shape and torch.isfinite(other).all() and not torch.allclose(other, base)
    with pytest.raises(ValueError):
        make_scorer("nope")


class CharTokenizer:
    """One id per printable ASCII character (ids 3..97), enough for the tiny model's vocabulary of 128."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) - 29 if 32 <= ord(c) < 127 else 3 for c in text]}

    def decode(self, ids):
        return "".join(chr(i + 29) for i in ids)


def test_needle_positions_point_at_the_key_digits(model):
    from triattention_sampler.evaluation.needle import build_needle, run_needle

    tok = CharTokenizer()
    hay = tok("lorem ipsum dolor sit amet " * 4)["input_ids"]
    ids, where = build_needle(tok, hay, 0.5, "123456")
    assert tok.decode([ids[t + 1].item() for t in where]) == "123456"
    rows = run_needle(model, tok, hay * 2, lambda: {"full": build_cache(model, "full", 1, 8),
                                                   "streamingllm@16": build_cache(model, "streamingllm", 16, 8)},
                      haystack_tokens=150, depths=[0.2], chunk=8, offset=0)
    assert {r["label"] for r in rows} == {"full", "streamingllm@16"}
    assert all(0.0 <= r["digit_acc"] <= 1.0 for r in rows)


def test_bench_rows_track_lengths_and_flat_kv_bytes(model):
    from triattention_sampler.evaluation.bench import decode_bench, sampled_decode_bench

    filler = torch.randint(3, 128, (400,))
    full = sampled_decode_bench(model, filler, build_cache(model, "full", 1, 8), lengths=[100, 200], window=16,
                                chunk=8, progress=False)
    pruned = sampled_decode_bench(model, filler, build_cache(model, "triattention", 32, 8), lengths=[100, 200],
                                  window=16, chunk=8, progress=False)
    assert [r["logical_length"] for r in full] == [100, 200] == [r["logical_length"] for r in pruned]
    assert full[1]["kv_bytes_used"] == 2 * full[0]["kv_bytes_used"]
    assert pruned[0]["kv_bytes_used"] == pruned[1]["kv_bytes_used"] and pruned[1]["rounds"] > pruned[0]["rounds"]
    assert all(0 <= r["compact_share"] < 1 and r["tokens_per_s"] > 0 for r in pruned)
    rows = decode_bench(model, filler[:5], build_cache(model, "streamingllm", 16, 8), max_new_tokens=40, every=20,
                        progress=False)
    assert [r["generated"] for r in rows] == [20, 40] and rows[-1]["physical_length"] <= 16 + 8
