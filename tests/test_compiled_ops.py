"""The compiled ops against the pure-torch reference, loaded as hub kernels: the CPU variant (built here) and, on a
GPU machine, the CUDA variant (see kernel_fixtures). The contract cases are the same for every backend."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from kernel_fixtures import (  # noqa: F401
    REPO_ID,
    cpu_variant,
    cuda_kernel,
    cuda_kernel_ops,
    cuda_variant,
    device,
    device_ops,
    kernel,
    kernel_ops,
    reference_ops,
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Scores are fp32 math whatever the key dtype (keys convert exactly), so one tolerance serves all dtypes;
# atol covers cancellation, scaled by the largest reference score.
RTOL = 1e-5


def _assert_scores_close(out, ref):
    torch.testing.assert_close(out.cpu(), ref, rtol=RTOL, atol=RTOL * ref.abs().max().item())


def _keys_view(shape, dtype, gen):
    """Keys as a non-contiguous view of a larger cache (offsets in N and D, last-dim stride 1)."""
    b, h, n, d = shape
    big = torch.randn(b, h + 1, n + 7, d + 16, generator=gen).to(dtype)
    return big[:, 1:, 3 : n + 3, 8 : d + 8]


def _score_inputs(b, hkv, g, o, n, d, r, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    keys = _keys_view((b, hkv, n, d), dtype, gen)
    trig = torch.randn(b, hkv * g, o, d, generator=gen)
    norm = torch.randn(b, hkv * g, r // 2, generator=gen)
    return keys, trig, norm


def _run_score_keys(ops, device, keys, trig, norm, rotary_dim, interleaved):
    """The op on ``device`` (keys keep their strides and storage offset), output back on the CPU."""
    if device != "cpu":
        keys = _same_view_on(keys, device)
    out = torch.full((keys.shape[0], trig.shape[1], keys.shape[2]), float("nan"), device=device)
    ops.score_keys(out, keys, trig.to(device), norm.to(device), rotary_dim, interleaved)
    return out.cpu()


def _same_view_on(view, device):
    """``view`` rebuilt on ``device`` over a copy of its whole storage, so strides and offset (alignment) match."""
    base = torch.empty(0, dtype=view.dtype).set_(view.untyped_storage()).to(device)
    return base.as_strided(view.shape, view.stride(), view.storage_offset())


@pytest.mark.kernels_ci
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("rotary_dim", [64, 32])
def test_score_keys(device_ops, device, reference_ops, dtype, interleaved, rotary_dim):
    keys, trig, norm = _score_inputs(2, 2, 3, 2, 83, 64, rotary_dim, dtype)
    assert not keys.is_contiguous()
    out = _run_score_keys(device_ops, device, keys, trig, norm, rotary_dim, interleaved)
    _assert_scores_close(out, reference_ops.score_keys(keys, trig, norm, rotary_dim, interleaved))


@pytest.mark.parametrize(
    "b,hkv,g,o,n,d,r",
    [(1, 1, 1, 1, 1, 8, 8), (1, 2, 8, 3, 37, 96, 48), (2, 1, 4, 1, 17, 128, 16), (1, 3, 3, 1, 1000, 64, 64)],
)
def test_score_keys_shapes(device_ops, device, reference_ops, b, hkv, g, o, n, d, r):
    keys, trig, norm = _score_inputs(b, hkv, g, o, n, d, r, torch.bfloat16, seed=n)
    out = _run_score_keys(device_ops, device, keys, trig, norm, r, False)
    _assert_scores_close(out, reference_ops.score_keys(keys, trig, norm, r, False))


# The CUDA fast path takes D in {64, 128}, rotary_dim == D, O == 1, G <= 8 and 4-element aligned key rows; the
# generic path everything else. Both are checked here (on the CPU variant these are just more shapes).
FAST_CASES = [  # b, hkv, g, n, d, dtype, interleaved
    (2, 2, 4, 4099, 128, torch.bfloat16, False),
    (2, 2, 4, 4099, 128, torch.bfloat16, True),
    (1, 8, 4, 70001, 128, torch.bfloat16, False),  # many blocks per row, grid-stride loop
    (1, 3, 3, 1001, 64, torch.float16, False),  # G padded to 4
    (1, 2, 8, 515, 128, torch.float32, True),
    (2, 1, 1, 998, 64, torch.bfloat16, True),
    (1, 2, 5, 333, 128, torch.float16, False),
    (1, 2, 2, 3, 64, torch.float32, False),
    (1, 2, 6, 129, 64, torch.bfloat16, True),  # D 64 with G > 4: 2 sums per lane, G padded to 8
    (1, 1, 7, 1025, 128, torch.float16, False),  # G 7
    (3, 1, 2, 5, 128, torch.bfloat16, False),  # fewer sums than lanes (V < L), several rows, tiny N
]


@pytest.mark.parametrize("b,hkv,g,n,d,dtype,interleaved", FAST_CASES)
def test_score_keys_fast_path_shapes(device_ops, device, reference_ops, b, hkv, g, n, d, dtype, interleaved):
    gen = torch.Generator().manual_seed(n)
    keys = torch.randn(b, hkv, n, d, generator=gen).to(dtype)
    trig = torch.randn(b, hkv * g, 1, d, generator=gen)
    norm = torch.randn(b, hkv * g, d // 2, generator=gen)
    out = _run_score_keys(device_ops, device, keys, trig, norm, d, interleaved)
    _assert_scores_close(out, reference_ops.score_keys(keys, trig, norm, d, interleaved))


GENERIC_CASES = {  # b, hkv, g, o, n, d, r, interleaved, key view: "contiguous" or "offset" (misaligned base)
    "odd_d": (1, 2, 2, 1, 300, 63, 62, False, "contiguous"),
    "partial_rotary": (1, 2, 4, 1, 300, 128, 64, False, "contiguous"),
    "partial_rotary_interleaved": (1, 2, 4, 1, 300, 128, 64, True, "contiguous"),
    "offsets": (2, 2, 4, 3, 300, 128, 128, False, "contiguous"),
    "misaligned_view": (1, 2, 4, 1, 300, 128, 128, False, "offset"),
    "group_9": (1, 1, 9, 1, 300, 64, 64, True, "contiguous"),
    # G*O weight rows beyond one block's shared memory (CUDA: the query heads split over several launches)
    "group_16_offsets_17": (1, 2, 16, 17, 100, 128, 128, False, "contiguous"),
}


@pytest.mark.parametrize("case", list(GENERIC_CASES))
def test_score_keys_generic_path_shapes(device_ops, device, reference_ops, case):
    b, hkv, g, o, n, d, r, interleaved, view = GENERIC_CASES[case]
    gen = torch.Generator().manual_seed(n + d)
    if view == "offset":  # base pointer one element past a 16-byte boundary
        keys = torch.randn(b, hkv, n, d + 1, generator=gen).to(torch.bfloat16)[..., 1:]
    else:
        keys = torch.randn(b, hkv, n, d, generator=gen).to(torch.bfloat16)
    trig = torch.randn(b, hkv * g, o, d, generator=gen)
    norm = torch.randn(b, hkv * g, r // 2, generator=gen)
    out = _run_score_keys(device_ops, device, keys, trig, norm, r, interleaved)
    _assert_scores_close(out, reference_ops.score_keys(keys, trig, norm, r, interleaved))


def test_score_keys_rejects_bad_inputs(device_ops, device):
    keys, trig, norm = _score_inputs(1, 2, 3, 1, 10, 64, 64, torch.float32)
    keys, trig, norm = keys.to(device), trig.to(device), norm.to(device)
    out = torch.empty(1, 6, 10, device=device)
    with pytest.raises(RuntimeError, match="rotary_dim"):
        device_ops.score_keys(out, keys, trig, norm, 63, False)
    with pytest.raises(RuntimeError, match="last-dim stride 1"):
        device_ops.score_keys(out, keys.transpose(2, 3), trig, norm, 64, False)
    with pytest.raises(RuntimeError, match=r"out must be \[B=1, Hq=6, N=10\]"):
        device_ops.score_keys(torch.empty(1, 6, 9, device=device), keys, trig, norm, 64, False)
    with pytest.raises(RuntimeError, match="keys must be float16, bfloat16 or float32"):
        device_ops.score_keys(out, keys.double(), trig, norm, 64, False)


def test_score_keys_empty(device_ops, device):
    keys, trig, norm = _score_inputs(1, 2, 3, 1, 0, 64, 64, torch.float32)
    device_ops.score_keys(torch.empty(1, 6, 0, device=device), keys.to(device), trig.to(device), norm.to(device),
                          64, False)


def _check_zscore(ops, device, reference_ops, scores, cand, group_size, use_max):
    out = torch.empty(scores.shape[0], scores.shape[1] // group_size, scores.shape[2], device=device)
    ops.zscore_group_reduce(out, scores.to(device), cand.to(device), group_size, use_max)
    ref = reference_ops.zscore_group_reduce(scores, cand, group_size, use_max)
    out = out.cpu()
    assert torch.equal(torch.isneginf(out), torch.isneginf(ref))
    finite = torch.isfinite(ref)
    torch.testing.assert_close(out[finite], ref[finite], rtol=RTOL, atol=RTOL)
    return out


@pytest.mark.kernels_ci
@pytest.mark.parametrize("group_size", [1, 3, 6])
@pytest.mark.parametrize("use_max", [True, False])
def test_zscore_group_reduce(device_ops, device, reference_ops, group_size, use_max):
    gen = torch.Generator().manual_seed(group_size)
    scores = torch.randn(3, 6, 83, generator=gen) * 5 + 2
    cand = torch.rand(3, 83, generator=gen) < 0.7
    cand[1] = False  # no candidates: all -inf
    cand[2] = True
    out = _check_zscore(device_ops, device, reference_ops, scores, cand, group_size, use_max)
    assert torch.isneginf(out[1]).all()


@pytest.mark.parametrize("use_max", [True, False])
def test_zscore_group_reduce_long_rows(device_ops, device, reference_ops, use_max):
    """N = 100000 spans many chunks per row: partial moments combine across blocks, deterministically."""
    gen = torch.Generator().manual_seed(7)
    scores = torch.randn(3, 8, 100000, generator=gen) * 3 + 40  # a large mean: cancellation in the variance
    cand = torch.rand(3, 100000, generator=gen) < 0.6  # holes
    cand[0, 50000:70000] = False
    cand[1] = False
    out = _check_zscore(device_ops, device, reference_ops, scores, cand, 4, use_max)
    assert torch.isneginf(out[1]).all()
    again = torch.empty(3, 2, 100000, device=device)
    device_ops.zscore_group_reduce(again, scores.to(device), cand.to(device), 4, use_max)
    assert torch.equal(out, again.cpu())


def test_zscore_constant_scores(device_ops, device, reference_ops):
    scores = torch.full((1, 2, 10), 3.0)
    cand = torch.ones(1, 10, dtype=torch.bool)
    out = torch.empty(1, 1, 10, device=device)
    device_ops.zscore_group_reduce(out, scores.to(device), cand.to(device), 2, True)
    torch.testing.assert_close(out.cpu(), reference_ops.zscore_group_reduce(scores, cand, 2, True))


def _check_topk(ops, device, reference_ops, scores, k):
    out = torch.empty(scores.shape[0], k, dtype=torch.int64, device=device)
    ops.select_topk(out, scores.to(device), k)
    assert torch.equal(out.cpu(), reference_ops.select_topk(scores, k))


@pytest.mark.kernels_ci
@pytest.mark.parametrize("k", [0, 1, 17, 82, 83])
def test_select_topk(device_ops, device, reference_ops, k):
    gen = torch.Generator().manual_seed(k)
    scores = torch.randint(-4, 5, (6, 83), generator=gen).float()  # many ties
    scores[0, ::3] = float("-inf")
    scores[1] = float("-inf")
    scores[2] = torch.randn(83, generator=gen)
    _check_topk(device_ops, device, reference_ops, scores, k)


@pytest.mark.parametrize("k", [1, 2048, 35000, 69999, 70000])
def test_select_topk_long_rows(device_ops, device, reference_ops, k):
    """N = 70000 spans many chunks per row: ties at the threshold cross chunk boundaries, -inf is selectable."""
    gen = torch.Generator().manual_seed(k)
    n = 70000
    scores = torch.randint(-3, 4, (6, n), generator=gen).float()
    scores[1] = float("-inf")
    scores[1, ::997] = torch.randn(scores[1, ::997].shape, generator=gen)
    scores[2] = float("-inf")
    scores[3] = torch.randn(n, generator=gen)
    scores[4] = 1.0
    scores[5, ::2] = float("-inf")
    scores[5, 1::4] = -0.0  # equal to +0.0 for the order
    _check_topk(device_ops, device, reference_ops, scores, k)


def test_select_topk_rejects_nan(kernel_ops):
    """Value checks need a look at the data: only the CPU kernel raises (CUDA would need a host sync)."""
    scores = torch.zeros(2, 5)
    scores[1, 3] = float("nan")
    with pytest.raises(RuntimeError, match="NaN score at row 1, column 3"):
        kernel_ops.ops.select_topk(torch.empty(2, 2, dtype=torch.int64), scores, 2)


def _make_caches(b, h, c, gen, layout=((torch.float32, 64), (torch.bfloat16, 64), (torch.float16, 128),
                                        (torch.float32, 24)), pad=4):
    """Caches of several dtypes and head dims, each a view into a buffer with sentinel rows beyond C and `pad`
    sentinel columns each side (pad 0: rows as aligned as a contiguous cache's)."""
    buffers, caches = [], []
    for dtype, d in layout:
        buf = torch.full((b, h, c + 5, d + 2 * pad), 42.0, dtype=dtype)
        view = buf[:, :, :c, pad : d + pad]
        view.copy_(torch.randn(b, h, c, d, generator=gen).to(dtype))
        buffers.append(buf)
        caches.append(view)
    return buffers, caches


def _bits(t):
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


def _sorted_indices(b, h, c, k, gen):
    return torch.stack([torch.randperm(c, generator=gen)[:k].sort().values for _ in range(b * h)]).view(b, h, k)


def _check_compact(ops, device, reference_ops, buffers, caches, idx):
    expected_buffers = [buf.clone() for buf in buffers]
    expected = [eb.as_strided(cv.shape, cv.stride(), cv.storage_offset()) for eb, cv in zip(expected_buffers, caches)]
    reference_ops.compact_(expected, idx)
    on_device = [_same_view_on(cv, device) if device != "cpu" else cv for cv in caches]
    ops.compact_(on_device, idx.to(device))
    for view, buf, exp in zip(on_device, buffers, expected_buffers):
        got = buf if device == "cpu" else torch.empty(0, dtype=view.dtype).set_(view.untyped_storage().cpu())
        # Bit-exact, including untouched slots >= K, the sentinel rows beyond C and the sentinel columns.
        assert torch.equal(_bits(got.view(-1)), _bits(exp.view(-1)))


@pytest.mark.kernels_ci
@pytest.mark.parametrize("k", [0, 1, 20, 50])
def test_compact_bit_exact(device_ops, device, reference_ops, k):
    gen = torch.Generator().manual_seed(k)
    b, h, c = 2, 3, 50
    buffers, caches = _make_caches(b, h, c, gen)
    _check_compact(device_ops, device, reference_ops, buffers, caches, _sorted_indices(b, h, c, k, gen))


def test_compact_odd_widths(device_ops, device, reference_ops):
    """Rows whose bytes allow only 2- or 4-byte vectors and are no multiple of a column slice (CUDA: the last
    slice of a row is narrower), several tiles of rows per slice, identity rows."""
    gen = torch.Generator().manual_seed(3)
    b, h, c, k = 2, 2, 700, 600
    layout = ((torch.float16, 63), (torch.float32, 5), (torch.bfloat16, 34))
    buffers, caches = _make_caches(b, h, c, gen, layout)
    idx = _sorted_indices(b, h, c, k, gen)
    idx[1, 0] = torch.arange(k)
    _check_compact(device_ops, device, reference_ops, buffers, caches, idx)


@pytest.mark.parametrize("pad", [0, 4])
def test_compact_budget_shape(device_ops, device, reference_ops, pad):
    """The benchmark's shape: K and V [8, 8, 2176, 128] bf16 kept to 2048, plus an fp32 cache of odd width; rows
    aligned as in a contiguous cache (pad 0: what CUDA's chunked path takes) or offset views."""
    gen = torch.Generator().manual_seed(0)
    b, h, c, k = 8, 8, 2176, 2048
    layout = ((torch.bfloat16, 128), (torch.bfloat16, 128), (torch.float32, 24))
    buffers, caches = _make_caches(b, h, c, gen, layout, pad)
    idx = _sorted_indices(b, h, c, k, gen)
    idx[0, 0] = torch.arange(k)  # identity row set
    _check_compact(device_ops, device, reference_ops, buffers, caches, idx)


def test_compact_unsorted_far_sources(device_ops, device, reference_ops):
    """The contract promises indices[j] >= j only: unsorted, repeated and far-ahead sources. On CUDA under
    TRIATTENTION_CUDA_TUNE compact_chunk (gpu_check's tuned step) the aligned caches go through the chunked path,
    where a chunk reads rows of chunks far after it; the offset view stays on the column slices."""
    gen = torch.Generator().manual_seed(5)
    b, h, c, k = 2, 3, 1500, 900
    buffers, caches = _make_caches(b, h, c, gen, ((torch.bfloat16, 128), (torch.float32, 64)), pad=0)
    offset_buffers, offset_caches = _make_caches(b, h, c, gen, ((torch.float16, 128),))
    j = torch.arange(k)
    idx = j + (torch.rand(b, h, k, generator=gen) * (c - j)).long()  # anywhere in [j, C)
    idx[0, 1] = j  # identity
    idx[1, 0] = c - 1  # every row from the last one
    idx[1, 2] = _sorted_indices(1, 1, c, k, gen)[0, 0]
    assert bool((idx >= j).all()) and bool((idx < c).all())
    _check_compact(device_ops, device, reference_ops, buffers + offset_buffers, caches + offset_caches, idx)


def test_compact_rejects_bad_indices(kernel_ops):
    """Index values are checked by the CPU kernel only (CUDA would need a host sync); shapes by every backend."""
    cache = torch.zeros(1, 1, 8, 4)
    with pytest.raises(RuntimeError, match=r"indices\[0, 0, 1\] = 0 must be in \[1, 8\)"):
        kernel_ops.ops.compact_([cache], torch.tensor([[[0, 0]]]))


def test_compact_rejects_bad_shapes(device_ops, device):
    cache = torch.zeros(1, 1, 8, 4, device=device)
    with pytest.raises(RuntimeError, match=r"must be \[B=1, H=2"):
        device_ops.compact_([cache], torch.zeros(1, 2, 1, dtype=torch.int64, device=device))


def test_opcheck(device_ops, device):
    """Schema and mutation annotations (no fake kernels are registered, so only the schema-level checks run)."""
    ops = device_ops
    utils = ("test_schema", "test_autograd_registration")
    keys, trig, norm = _score_inputs(1, 2, 3, 1, 9, 64, 32, torch.bfloat16)
    keys, trig, norm = keys.to(device), trig.to(device), norm.to(device)
    torch.library.opcheck(ops.score_keys, (torch.empty(1, 6, 9, device=device), keys, trig, norm, 32, True),
                          test_utils=utils)
    scores = torch.randn(1, 6, 9, device=device)
    cand = torch.rand(1, 9, device=device) < 0.5
    torch.library.opcheck(ops.zscore_group_reduce, (torch.empty(1, 2, 9, device=device), scores, cand, 3, True),
                          test_utils=utils)
    torch.library.opcheck(ops.select_topk, (torch.empty(6, 4, dtype=torch.int64, device=device), scores[0], 4),
                          test_utils=utils)
    caches = [torch.randn(1, 2, 9, 8, device=device), torch.randn(1, 2, 9, 16, device=device)]
    idx = torch.tensor([[[1, 4, 8], [0, 2, 3]]], device=device)
    torch.library.opcheck(ops.compact_, (caches, idx), test_utils=utils)


def test_namespace_and_dispatch(kernel, kernel_ops):
    """The ops live in the generated unique namespace, and the package's dispatch routes CPU to them."""
    name = kernel_ops.ops._name if hasattr(kernel_ops.ops, "_name") else kernel_ops.ops.name
    assert name.startswith("_triattention_cpu_")
    assert kernel_ops.add_op_namespace_prefix("score_keys") == f"{name}::score_keys"
    assert kernel.backend_name(torch.device("cpu")) == "compiled"


def test_cuda_variant_namespace_and_metadata(cuda_kernel, cuda_kernel_ops, cuda_variant):
    from kernels._rust import Backend, Metadata

    name = cuda_kernel_ops.ops._name if hasattr(cuda_kernel_ops.ops, "_name") else cuda_kernel_ops.ops.name
    assert name.startswith("_triattention_cuda_")
    assert cuda_kernel.backend_name(torch.device("cuda")) == "compiled"
    meta = Metadata.read_from_file(cuda_variant / "metadata.json")
    assert meta.backend.backend_type == Backend.CUDA and meta.backend.archs
    major, minor = torch.cuda.get_device_capability()
    assert f"{major}.{minor}" in [a.replace("+PTX", "") for a in meta.backend.archs]


def test_metadata_and_abi(cpu_variant):
    from kernels._rust import Backend, Metadata

    meta = Metadata.read_from_file(cpu_variant / "metadata.json")
    so = cpu_variant / f"{meta.id}.abi3.so"
    assert so.exists() and meta.name.python_name == "triattention" and meta.version == 1
    assert meta.backend.backend_type == Backend.CPU
    kernel_abi_check = pytest.importorskip("kernel_abi_check", reason="kernel-abi-check (PyPI) not installed")
    obj = kernel_abi_check.ObjectFile(so)
    assert obj.check_python_abi("3.9") == []
    assert obj.check_manylinux("manylinux_2_28") == []


def test_bad_metadata_fails_to_load(cpu_variant, tmp_path, monkeypatch):
    from kernels import get_kernel

    variant = tmp_path / "build" / cpu_variant.name
    shutil.copytree(cpu_variant, variant)
    meta = json.loads((variant / "metadata.json").read_text())
    del meta["python-depends"]
    (variant / "metadata.json").write_text(json.dumps(meta))
    monkeypatch.setenv("LOCAL_KERNELS", f"{REPO_ID}={variant}")
    with pytest.raises(Exception, match="python-depends"):
        get_kernel(REPO_ID, version=1)


def test_load_from_offline_hub_cache(cpu_variant, tmp_path):
    """The variant as a Hub snapshot (refs/v1 -> snapshots/<sha>/build/<variant>) loads with HF_HUB_OFFLINE=1."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    org, name = REPO_ID.split("/")
    repo = tmp_path / f"kernels--{org}--{name}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "v1").write_text(sha)
    shutil.copytree(cpu_variant, repo / "snapshots" / sha / "build" / cpu_variant.name)
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_KERNELS", "KERNELS_CACHE")}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path))
    code = (
        "import torch, kernels\n"
        f"k = kernels.get_kernel({REPO_ID!r}, version=1)\n"
        "assert k.backend_name(torch.device('cpu')) == 'compiled', k.backend_name()\n"
        "out = k._dispatch.select_topk(torch.tensor([[1.0, 3.0, 2.0]]), 2)\n"
        "assert out.tolist() == [[1, 2]], out\n"
        "print('loaded', k.__file__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(repo / "snapshots" / sha) in proc.stdout
