"""The seed API against an independent brute force written from the paper's formula."""
import math

import pytest
import torch

import triattention as ta

STYLES = ["half", "interleaved"]
AGGS = ["mean", "max"]


def pairs(x, style):
    """(re, im) of each frequency, written out here rather than reusing the package's helper."""
    d = x.shape[-1]
    if style == "half":
        return x[..., : d // 2], x[..., d // 2:]
    return x[..., 0::2], x[..., 1::2]


def brute_force_scores(k_unrot, positions, round_start, q_re, q_im, q_abs, omega, offsets, s2, agg,
                       disable_mlr=False, disable_trig=False, style="half"):
    """Explicit loop over offsets and frequencies, float64."""
    kr, ki = (t.double() for t in pairs(k_unrot.double(), style))
    n, freq = kr.shape
    per_offset = torch.zeros(n, len(offsets), dtype=torch.float64)
    for o, delta in enumerate(offsets):
        total = torch.zeros(n, dtype=torch.float64)
        for f in range(freq):
            qm = math.hypot(q_re[f], q_im[f])
            km = torch.sqrt(kr[:, f] ** 2 + ki[:, f] ** 2)
            # phase of q_f * conj(k_f)
            phi = torch.atan2(q_im[f] * kr[:, f] - q_re[f] * ki[:, f], q_re[f] * kr[:, f] + q_im[f] * ki[:, f])
            dist = round_start - positions.double() + delta
            if not disable_trig:
                total += s2[f] * qm * km * torch.cos(omega[f] * dist + phi)
            weight = q_abs[f] if disable_mlr else q_abs[f] - qm
            total += s2[f] * weight * km
        per_offset[:, o] = total
    return per_offset.mean(1) if agg == "mean" else per_offset.max(1).values


def make_case(n=40, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    freq = d // 2
    k = torch.randn(n, d, generator=g) + 0.5
    q_re = torch.randn(freq, generator=g) * 2
    q_im = torch.randn(freq, generator=g) * 2
    q_abs = torch.sqrt(q_re ** 2 + q_im ** 2) * (1 + torch.rand(freq, generator=g))
    omega = 1.0 / (10000 ** (torch.arange(freq, dtype=torch.float32) * 2 / d))
    positions = torch.randint(0, 500, (n,), generator=g)
    s2 = torch.full((freq,), 1.2 ** 2)
    return k, positions, q_re, q_im, q_abs, omega, s2


@pytest.mark.kernels_ci
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("flags", [(False, False), (True, False), (False, True)])
def test_score_keys_for_round_matches_brute_force(style, agg, flags):
    disable_mlr, disable_trig = flags
    k, pos, q_re, q_im, q_abs, omega, s2 = make_case()
    offsets = ta.build_geometric_offsets(1024, torch.device("cpu"))
    amp, phi, extra = ta.compute_frequency_statistics_from_means(
        torch.complex(q_re, q_im), q_abs, k, style=style, disable_mlr=disable_mlr
    )
    got = ta.score_keys_for_round(pos, 600, amp, phi, omega, extra, offsets, agg, s2, disable_trig=disable_trig)
    want = brute_force_scores(k, pos, 600, q_re.double(), q_im.double(), q_abs.double(), omega.double(),
                              offsets.tolist(), s2.double(), agg, disable_mlr, disable_trig, style)
    assert got.dtype == torch.float32 and got.shape == (k.shape[0],)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def rotate_fp64(x, positions, omega, scale, style):
    """Forward RoPE written out: pair (a, b) -> scale * (a cos - b sin, a sin + b cos)."""
    a, b = pairs(x.double(), style)
    th = positions.double()[:, None] * omega.double()[None, :]
    ra = scale * (a * torch.cos(th) - b * torch.sin(th))
    rb = scale * (a * torch.sin(th) + b * torch.cos(th))
    if style == "half":
        return torch.cat([ra, rb], -1)
    return torch.stack([ra, rb], -1).flatten(-2)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_path_matches_brute_force_up_to_scale(style, agg, dtype):
    """Keys cached post-RoPE at positions up to 131072; the fast path never sees their positions."""
    d, n, scale = 32, 64, 1.3
    k, _, q_re, q_im, q_abs, omega, _ = make_case(n=n, d=d, seed=1)
    pos = torch.cat([torch.tensor([0, 1, 131071, 131072]), torch.randint(0, 131073, (n - 4,))])
    cached = rotate_fp64(k, pos, omega, scale, style).to(dtype)
    # Reference inputs: the cached (possibly bf16-rounded) keys, un-rotated exactly in float64.
    a, b = pairs(cached.double() / scale, style)
    th = pos.double()[:, None] * omega.double()[None, :]
    ua, ub = a * torch.cos(th) + b * torch.sin(th), b * torch.cos(th) - a * torch.sin(th)
    k_ref = torch.cat([ua, ub], -1) if style == "half" else torch.stack([ua, ub], -1).flatten(-2)
    round_start = 131072 + 100
    offsets = ta.build_geometric_offsets(65536, torch.device("cpu"))
    s2 = torch.full((d // 2,), scale ** 2)
    want = brute_force_scores(k_ref, pos, round_start, q_re.double(), q_im.double(), q_abs.double(),
                              omega.double(), offsets.tolist(), s2.double(), agg, style=style)
    w, c = ta.round_weights(q_re[None], q_im[None], q_abs[None], omega, round_start, offsets,
                            head_dim=d, style=style, aggregation=agg, freq_scale_sq=s2)
    got = ta.score_post_rope_keys(cached[None, None], w, c, style=style)[0, 0].double() / scale
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def hf_cos_sin(positions, omega, scale, style):
    th = positions.float()[:, None] * omega[None, :]
    if style == "half":
        emb = torch.cat([th, th], -1)
    else:
        emb = torch.repeat_interleave(th, 2, dim=-1)
    return emb.cos() * scale, emb.sin() * scale


@pytest.mark.kernels_ci
@pytest.mark.parametrize("style", STYLES)
def test_invert_rope_inverts_hf_rope_with_attention_scaling(style):
    d, scale = 64, 1.3466
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 50, d, generator=g)
    omega = 1.0 / (500000 ** (torch.arange(d // 2, dtype=torch.float32) * 2 / d))
    pos = torch.arange(50) * 37
    cos, sin = hf_cos_sin(pos, omega, scale, style)
    rotated = x * cos + ta.rotate_half(x, style=style) * sin  # HF apply_rotary_pos_emb
    back = ta.invert_rope(rotated, cos, sin, scale, style=style)
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)


def test_rotate_half_is_multiplication_by_i():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert ta.rotate_half(x, style="half").tolist() == [-3.0, -4.0, 1.0, 2.0]
    assert ta.rotate_half(x, style="interleaved").tolist() == [-2.0, 1.0, -4.0, 3.0]
    z = ta.to_complex_pairs(x, style="interleaved")
    assert torch.equal(ta.to_complex_pairs(ta.rotate_half(x, style="interleaved"), style="interleaved"), z * 1j)


def test_build_geometric_offsets():
    assert ta.build_geometric_offsets(1, torch.device("cpu")).tolist() == [1.0]
    assert ta.build_geometric_offsets(65536, torch.device("cpu")).numel() == 17
    assert ta.build_geometric_offsets(100, torch.device("cpu")).tolist() == [1, 2, 4, 8, 16, 32, 64]


@pytest.mark.kernels_ci
@pytest.mark.parametrize("n,budget", [(10, 0), (10, 3), (10, 10), (10, 25), (1, 1), (0, 5)])
def test_select_keys_to_keep_exact_counts(n, budget):
    scores = torch.randn(n)
    keep = ta.select_keys_to_keep(scores, kv_budget=budget)
    assert keep.dtype == torch.bool and keep.shape == (n,)
    assert int(keep.sum()) == min(budget, n)
    if 0 < budget < n:
        assert scores[keep].min() >= scores[~keep].max()
    assert bool(ta.select_keys_to_keep(scores, kv_budget=None).all())


def test_select_keys_to_keep_ties_go_to_earlier_keys():
    keep = ta.select_keys_to_keep(torch.tensor([1.0, 2.0, 2.0, 2.0, 0.0]), kv_budget=2)
    assert keep.tolist() == [False, True, True, False, False]


@pytest.mark.parametrize("call,match", [
    (lambda: ta.to_complex_pairs(torch.randn(3, 5)), "even last dimension"),
    (lambda: ta.rotate_half(torch.randn(3, 5)), "even last dimension"),
    (lambda: ta.rotate_half(torch.randn(4), style="neox"), "style"),
    (lambda: ta.to_complex_pairs(torch.randn(4), style="bogus"), "style"),
    (lambda: ta.build_geometric_offsets(0, torch.device("cpu")), "max_length"),
    (lambda: ta.select_keys_to_keep(torch.randn(4), kv_budget=-1), "kv_budget"),
    (lambda: ta.select_keys_to_keep(torch.randn(2, 4), kv_budget=1), "scores"),
    (lambda: ta.invert_rope(torch.randn(2, 4), torch.ones(2, 4), torch.ones(2, 4), 0.0), "scale"),
    (lambda: ta.invert_rope(torch.randn(2, 4), torch.ones(2, 6), torch.ones(2, 6), 1.0), "head_dim"),
    (lambda: ta.compute_frequency_statistics_from_means(torch.zeros(3, dtype=torch.complex64), torch.zeros(3),
                                                        torch.randn(5, 8)), "q_mean_complex"),
    (lambda: ta.score_keys_for_round(torch.arange(3), 5, torch.ones(3, 4), torch.ones(3, 4), torch.ones(4),
                                     torch.ones(2, 4), torch.ones(2), "mean", torch.ones(4)), "extra"),
    (lambda: ta.score_keys_for_round(torch.arange(3), 5, torch.ones(3, 4), torch.ones(3, 4), torch.ones(4),
                                     torch.ones(3, 4), torch.ones(2), "median", torch.ones(4)), "aggregation"),
    (lambda: ta.score_keys_for_round(torch.arange(3), 5, torch.ones(3, 4), torch.ones(3, 4), torch.ones(5),
                                     torch.ones(3, 4), torch.ones(2), "mean", torch.ones(4)), "omega"),
])
def test_bad_arguments_raise_value_error_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()
