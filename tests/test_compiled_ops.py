"""The compiled CPU ops (kernel_src/triattention_cpu) against the pure-torch reference, loaded as a hub kernel."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from kernel_fixtures import REPO_ID, cpu_variant, kernel, kernel_ops, reference_ops  # noqa: F401

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Scores are fp32 math whatever the key dtype (keys convert exactly), so one tolerance serves all dtypes;
# atol covers cancellation, scaled by the largest reference score.
RTOL = 1e-5


def _assert_scores_close(out, ref):
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=RTOL * ref.abs().max().item())


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


@pytest.mark.kernels_ci
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("rotary_dim", [64, 32])
def test_score_keys(kernel_ops, reference_ops, dtype, interleaved, rotary_dim):
    keys, trig, norm = _score_inputs(2, 2, 3, 2, 83, 64, rotary_dim, dtype)
    assert not keys.is_contiguous()
    out = torch.full((2, 6, 83), float("nan"))
    kernel_ops.ops.score_keys(out, keys, trig, norm, rotary_dim, interleaved)
    _assert_scores_close(out, reference_ops.score_keys(keys, trig, norm, rotary_dim, interleaved))


@pytest.mark.parametrize(
    "b,hkv,g,o,n,d,r",
    [(1, 1, 1, 1, 1, 8, 8), (1, 2, 8, 3, 37, 96, 48), (2, 1, 4, 1, 17, 128, 16), (1, 3, 3, 1, 1000, 64, 64)],
)
def test_score_keys_shapes(kernel_ops, reference_ops, b, hkv, g, o, n, d, r):
    keys, trig, norm = _score_inputs(b, hkv, g, o, n, d, r, torch.bfloat16, seed=n)
    out = torch.empty(b, hkv * g, n)
    kernel_ops.ops.score_keys(out, keys, trig, norm, r, False)
    _assert_scores_close(out, reference_ops.score_keys(keys, trig, norm, r, False))


def test_score_keys_rejects_bad_inputs(kernel_ops):
    keys, trig, norm = _score_inputs(1, 2, 3, 1, 10, 64, 64, torch.float32)
    out = torch.empty(1, 6, 10)
    with pytest.raises(RuntimeError, match="rotary_dim"):
        kernel_ops.ops.score_keys(out, keys, trig, norm, 63, False)
    with pytest.raises(RuntimeError, match="last-dim stride 1"):
        kernel_ops.ops.score_keys(out, keys.transpose(2, 3), trig, norm, 64, False)
    with pytest.raises(RuntimeError, match=r"out must be \[B=1, Hq=6, N=10\]"):
        kernel_ops.ops.score_keys(torch.empty(1, 6, 9), keys, trig, norm, 64, False)
    with pytest.raises(RuntimeError, match="keys must be float16, bfloat16 or float32"):
        kernel_ops.ops.score_keys(out, keys.double(), trig, norm, 64, False)


def test_score_keys_empty(kernel_ops):
    keys, trig, norm = _score_inputs(1, 2, 3, 1, 0, 64, 64, torch.float32)
    kernel_ops.ops.score_keys(torch.empty(1, 6, 0), keys, trig, norm, 64, False)


@pytest.mark.kernels_ci
@pytest.mark.parametrize("group_size", [1, 3, 6])
@pytest.mark.parametrize("use_max", [True, False])
def test_zscore_group_reduce(kernel_ops, reference_ops, group_size, use_max):
    gen = torch.Generator().manual_seed(group_size)
    scores = torch.randn(3, 6, 83, generator=gen) * 5 + 2
    cand = torch.rand(3, 83, generator=gen) < 0.7
    cand[1] = False  # no candidates: all -inf
    cand[2] = True
    out = torch.empty(3, 6 // group_size, 83)
    kernel_ops.ops.zscore_group_reduce(out, scores, cand, group_size, use_max)
    ref = reference_ops.zscore_group_reduce(scores, cand, group_size, use_max)
    assert torch.equal(torch.isneginf(out), torch.isneginf(ref))
    assert torch.isneginf(out[1]).all()
    finite = torch.isfinite(ref)
    torch.testing.assert_close(out[finite], ref[finite], rtol=RTOL, atol=RTOL)


def test_zscore_constant_scores(kernel_ops, reference_ops):
    scores = torch.full((1, 2, 10), 3.0)
    cand = torch.ones(1, 10, dtype=torch.bool)
    out = torch.empty(1, 1, 10)
    kernel_ops.ops.zscore_group_reduce(out, scores, cand, 2, True)
    torch.testing.assert_close(out, reference_ops.zscore_group_reduce(scores, cand, 2, True))


@pytest.mark.kernels_ci
@pytest.mark.parametrize("k", [0, 1, 17, 82, 83])
def test_select_topk(kernel_ops, reference_ops, k):
    gen = torch.Generator().manual_seed(k)
    scores = torch.randint(-4, 5, (6, 83), generator=gen).float()  # many ties
    scores[0, ::3] = float("-inf")
    scores[1] = float("-inf")
    scores[2] = torch.randn(83, generator=gen)
    out = torch.empty(6, k, dtype=torch.int64)
    kernel_ops.ops.select_topk(out, scores, k)
    assert torch.equal(out, reference_ops.select_topk(scores, k))


def test_select_topk_rejects_nan(kernel_ops):
    scores = torch.zeros(2, 5)
    scores[1, 3] = float("nan")
    with pytest.raises(RuntimeError, match="NaN score at row 1, column 3"):
        kernel_ops.ops.select_topk(torch.empty(2, 2, dtype=torch.int64), scores, 2)


def _make_caches(b, h, c, gen):
    """Caches of several dtypes and head dims, each a view into a buffer with sentinel rows beyond C."""
    buffers, caches = [], []
    for dtype, d in [(torch.float32, 64), (torch.bfloat16, 64), (torch.float16, 128), (torch.float32, 24)]:
        buf = torch.full((b, h, c + 5, d + 8), 42.0, dtype=dtype)
        view = buf[:, :, :c, 4 : d + 4]
        view.copy_(torch.randn(b, h, c, d, generator=gen).to(dtype))
        buffers.append(buf)
        caches.append(view)
    return buffers, caches


def _bits(t):
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


def _sorted_indices(b, h, c, k, gen):
    return torch.stack([torch.randperm(c, generator=gen)[:k].sort().values for _ in range(b * h)]).view(b, h, k)


@pytest.mark.kernels_ci
@pytest.mark.parametrize("k", [0, 1, 20, 50])
def test_compact_bit_exact(kernel_ops, reference_ops, k):
    gen = torch.Generator().manual_seed(k)
    b, h, c = 2, 3, 50
    buffers, caches = _make_caches(b, h, c, gen)
    expected_buffers = [buf.clone() for buf in buffers]
    expected = [eb[:, :, :c, 4 : cv.shape[-1] + 4] for eb, cv in zip(expected_buffers, caches)]
    idx = _sorted_indices(b, h, c, k, gen)
    reference_ops.compact_(expected, idx)
    kernel_ops.ops.compact_(caches, idx)
    for buf, exp in zip(buffers, expected_buffers):
        # Bit-exact, including untouched slots >= K, the sentinel rows beyond C and the sentinel columns.
        assert torch.equal(_bits(buf), _bits(exp))


def test_compact_rejects_bad_indices(kernel_ops):
    cache = torch.zeros(1, 1, 8, 4)
    with pytest.raises(RuntimeError, match=r"indices\[0, 0, 1\] = 0 must be in \[1, 8\)"):
        kernel_ops.ops.compact_([cache], torch.tensor([[[0, 0]]]))
    with pytest.raises(RuntimeError, match=r"must be \[B=1, H=2"):
        kernel_ops.ops.compact_([cache], torch.zeros(1, 2, 1, dtype=torch.int64))


def test_opcheck(kernel_ops):
    """Schema and mutation annotations (no fake kernels are registered, so only the schema-level checks run)."""
    ops = kernel_ops.ops
    utils = ("test_schema", "test_autograd_registration")
    keys, trig, norm = _score_inputs(1, 2, 3, 1, 9, 64, 32, torch.bfloat16)
    torch.library.opcheck(ops.score_keys, (torch.empty(1, 6, 9), keys, trig, norm, 32, True), test_utils=utils)
    scores = torch.randn(1, 6, 9)
    cand = torch.rand(1, 9) < 0.5
    torch.library.opcheck(ops.zscore_group_reduce, (torch.empty(1, 2, 9), scores, cand, 3, True), test_utils=utils)
    torch.library.opcheck(ops.select_topk, (torch.empty(6, 4, dtype=torch.int64), scores[0], 4), test_utils=utils)
    caches = [torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 16)]
    idx = torch.tensor([[[1, 4, 8], [0, 2, 3]]])
    torch.library.opcheck(ops.compact_, (caches, idx), test_utils=utils)


def test_namespace_and_dispatch(kernel, kernel_ops):
    """The ops live in the generated unique namespace, and the package's dispatch routes CPU to them."""
    name = kernel_ops.ops._name if hasattr(kernel_ops.ops, "_name") else kernel_ops.ops.name
    assert name.startswith("_triattention_cpu_")
    assert kernel_ops.add_op_namespace_prefix("score_keys") == f"{name}::score_keys"
    assert kernel.backend_name(torch.device("cpu")) == "compiled"


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
