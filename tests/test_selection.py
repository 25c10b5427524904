"""Batched fast path, z-score/GQA reduction, granularities, protected tokens, compaction, statistics."""
import pytest
import torch

import triattention as ta
from triattention import reference_ops


def test_batched_fast_path_equals_per_head_seed_path():
    """[B, Hkv, N, D] scoring with GQA equals the seed API run head by head (times the scale)."""
    g = torch.Generator().manual_seed(0)
    b, hkv, group, n, d, scale = 2, 3, 3, 37, 64, 1.1
    hq, freq = hkv * group, d // 2
    omega = 1.0 / (100000 ** (torch.arange(freq, dtype=torch.float32) * 2 / d))
    pos = torch.arange(n) + 5
    k_pre = torch.randn(b, hkv, n, d, generator=g)
    cached = ta.apply_rope(k_pre, omega, pos.expand(b, hkv, n), scale)
    qr, qi = torch.randn(b, hq, freq, generator=g), torch.randn(b, hq, freq, generator=g)
    qa = torch.sqrt(qr ** 2 + qi ** 2) + torch.rand(b, hq, freq, generator=g)
    offsets = ta.build_geometric_offsets(65536, torch.device("cpu"))
    s2 = torch.full((freq,), scale ** 2)
    round_start = torch.tensor([n + 5, n + 9])
    w, c = ta.round_weights(qr, qi, qa, omega, round_start, offsets, head_dim=d, freq_scale_sq=s2)
    got = ta.score_post_rope_keys(cached, w, c)
    for bi in range(b):
        for h in range(hq):
            amp, phi, extra = ta.compute_frequency_statistics_from_means(
                torch.complex(qr[bi, h], qi[bi, h]), qa[bi, h], k_pre[bi, h // group])
            want = ta.score_keys_for_round(pos, int(round_start[bi]), amp, phi, omega, extra, offsets, "mean", s2)
            torch.testing.assert_close(got[bi, h] / scale, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_disable_trig_scores_do_not_depend_on_round_start():
    g = torch.Generator().manual_seed(1)
    q = [torch.randn(4, 8, generator=g) for _ in range(3)]
    omega = torch.rand(8)
    offsets = ta.build_geometric_offsets(64, torch.device("cpu"))
    keys = torch.randn(1, 2, 10, 16, generator=g)
    out = [ta.score_post_rope_keys(keys, *ta.round_weights(*q, omega, t, offsets, head_dim=16, disable_trig=True))
           for t in (10, 5000)]
    torch.testing.assert_close(out[0], out[1])


def test_zscore_group_reduce_reference_by_hand():
    scores = torch.tensor([[[1.0, 2.0, 3.0, 100.0], [3.0, 2.0, 1.0, -5.0]]])  # [1, 2, 4]
    cand = torch.tensor([[True, True, True, False]])
    out = reference_ops.zscore_group_reduce(scores, cand, 2, True)
    z = (torch.tensor([1.0, 2.0, 3.0]) - 2.0) / torch.tensor(2.0 / 3).sqrt()
    torch.testing.assert_close(out[0, 0, :3], torch.maximum(z, z.flip(0)))
    assert out[0, 0, 3] == float("-inf")
    mean_out = reference_ops.zscore_group_reduce(scores, cand, 2, False)
    torch.testing.assert_close(mean_out[0, 0, :3], torch.zeros(3), atol=1e-6, rtol=0)


def test_reduce_query_heads_per_kv_head_candidates():
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(2, 6, 9, generator=g)
    cand = torch.rand(2, 3, 9, generator=g) > 0.3
    out = ta.reduce_query_heads(scores, cand)
    for bi in range(2):
        for kv in range(3):
            want = reference_ops.zscore_group_reduce(scores[bi:bi + 1, 2 * kv:2 * kv + 2], cand[bi:bi + 1, kv], 2, True)
            torch.testing.assert_close(out[bi, kv], want[0, 0])


@pytest.mark.parametrize("granularity", ["per_head", "per_layer_head", "union"])
def test_combine_layers(granularity):
    per_layer = [torch.randn(2, 3, 8) for _ in range(4)]
    out = ta.combine_layers(per_layer, granularity)
    assert len(out) == 4
    if granularity == "per_head":
        torch.testing.assert_close(out[1], torch.stack(per_layer).mean(0))
    elif granularity == "union":
        want = torch.stack(per_layer).amax(dim=(0, 2))
        assert all(torch.equal(o, want[:, None].expand(2, 3, 8)) for o in out)
    else:
        assert all(o is p for o, p in zip(out, per_layer))


def test_select_topk_ties_and_order():
    scores = torch.tensor([[0.5, 2.0, 2.0, -1.0, 2.0, float("-inf")]])
    assert reference_ops.select_topk(scores, 3).tolist() == [[1, 2, 4]]
    assert reference_ops.select_topk(scores, 6).tolist() == [[0, 1, 2, 3, 4, 5]]
    assert reference_ops.select_topk(scores, 0).shape == (1, 0)


def test_select_keep_indices_protected_pads_and_fill():
    # Row 0: keep 3 of 6 real; slot 0 protected. Row 1: 2 pads on the left, keeps all 4 real + 0 filler,
    # padded to out_len=4... rows share out_len=4, so row 0 gets one invalid filler slot.
    scores = torch.tensor([[[0.0, 5.0, 1.0, 4.0, 3.0, 2.0]], [[9.0, 9.0, 1.0, 2.0, 3.0, 4.0]]])
    valid = torch.tensor([[[True] * 6], [[False, False, True, True, True, True]]])
    protected = torch.zeros_like(valid)
    protected[0, 0, 0] = True
    idx, keep_valid = ta.select_keep_indices(scores, valid, torch.tensor([3, 4]), 4, protected)
    assert idx[0, 0].tolist() == [0, 1, 2, 3] and keep_valid[0, 0].tolist() == [True, True, False, True]
    assert idx[1, 0].tolist() == [2, 3, 4, 5] and keep_valid[1, 0].all()
    assert bool((idx >= torch.arange(4)).all())  # safe for in-place compaction


def test_select_keep_indices_never_keeps_pads_over_real_tokens():
    scores = torch.tensor([[[100.0, 100.0, -3.0, -2.0, -1.0]]])
    valid = torch.tensor([[[False, False, True, True, True]]])
    idx, keep_valid = ta.select_keep_indices(scores, valid, torch.tensor([2]), 2)
    assert idx.tolist() == [[[3, 4]]] and keep_valid.all()


def test_select_keep_indices_rejects_bad_counts():
    with pytest.raises(ValueError, match="keep_real"):
        ta.select_keep_indices(torch.zeros(1, 1, 4), torch.ones(1, 1, 4, dtype=torch.bool), torch.tensor([5]), 4)
    with pytest.raises(ValueError, match="real tokens"):
        ta.select_keep_indices(torch.zeros(1, 1, 4), torch.zeros(1, 1, 4, dtype=torch.bool), torch.tensor([2]), 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_compact_in_place_many_layers(dtype):
    g = torch.Generator().manual_seed(4)
    caches = [torch.randn(2, 3, 12, 8, generator=g).to(dtype) for _ in range(3)]
    before = [c.clone() for c in caches]
    idx = torch.sort(torch.rand(2, 3, 12, generator=g).argsort(-1)[..., :7], -1).values
    ta.compact_(caches, idx)
    for c, old in zip(caches, before):
        want = torch.gather(old, 2, idx[..., None].expand(-1, -1, -1, 8))
        assert torch.equal(c[:, :, :7], want)
        assert torch.equal(c[:, :, 7:], old[:, :, 7:])  # slots past K untouched


def test_compact_rejects_device_and_shape_mismatch():
    with pytest.raises(ValueError, match="does not fit"):
        ta.compact_([torch.zeros(1, 2, 3, 4)], torch.zeros(1, 2, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        ta.compact_([torch.zeros(1, 2, 3, 4)], torch.zeros(1, 2, 2, dtype=torch.int32))


def test_score_post_rope_keys_validates():
    with pytest.raises(ValueError, match="multiple"):
        ta.score_post_rope_keys(torch.zeros(1, 3, 4, 8), torch.zeros(1, 4, 1, 8), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="norm_weights"):
        ta.score_post_rope_keys(torch.zeros(1, 2, 4, 8), torch.zeros(1, 4, 1, 8), torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="floating"):
        ta.score_post_rope_keys(torch.zeros(1, 2, 4, 8, dtype=torch.int32), torch.zeros(1, 4, 1, 8),
                                torch.zeros(1, 4, 4))


def test_stats_merge_exactly_and_mrl():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 4, 30, 16, generator=g) + 2.0
    whole = ta.QueryFrequencyStats(1, 2, 4, 16)
    whole.update(1, q)
    whole.update(0, q)
    a, b = ta.QueryFrequencyStats(1, 2, 4, 16), ta.QueryFrequencyStats(1, 2, 4, 16)
    for part, sl in ((a, slice(0, 11)), (b, slice(11, 30))):
        part.update(1, q[:, :, sl])
        part.update(0, q[:, :, sl])
    a.merge_(b)
    for key, val in whole.means().items():
        torch.testing.assert_close(a.means()[key], val)
    zc = ta.to_complex_pairs(q[0].double())
    torch.testing.assert_close(whole.means()["q_mean_real"][0, 1], zc.mean(1).real.float())
    torch.testing.assert_close(whole.means()["q_abs_mean"][0, 1], zc.abs().mean(1).float())
    mrl = whole.mean_resultant_length()
    assert bool(((mrl > 0) & (mrl <= 1)).all())


def test_stats_padding_weights_drop_tokens():
    q = torch.randn(2, 1, 5, 4)
    s = ta.QueryFrequencyStats(2, 1, 1, 4)
    s.update(0, q, weights=torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]))
    torch.testing.assert_close(s.means()["q_mean_real"][0, 0, 0], q[0, 0, 2:, :2].mean(0))
    assert s.count.tolist() == [[3.0], [5.0]]
