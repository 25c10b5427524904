"""CUDA code checked on a machine without a GPU, the parts a GPU session should not be the first to exercise.

- The launchers' host side: nvcc builds the compact_ launchers with a small host program that calls them. No kernel
  runs (there is no driver), so a call that tries to launch returns a driver error and one that must not launch
  returns before it: which path a call takes, and the workspace it sizes.
- Every op's kernels run on the CPU: the kernel files compiled by the host compiler against
  tests/cuda_on_cpu/common.cuh (three blocks at a time taking indices in order, each block's threads as std::threads
  meeting at a barrier, warp shuffles through a buffer, cp.async copies done at their wait), their CUDA-only
  forms rewritten into that header's calls, and the launchers' results under launch settings compared with
  kernel_src/OPS.md evaluated directly (tests/cuda_on_cpu/*_check.cpp). The index arithmetic, the barriers within a
  block, the protocols between blocks (compact_'s flags, top-k's last block); not the GPU's weaker memory model or
  its timing.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CUDA_DIR = ROOT / "kernel_src" / "triattention_cuda"

PROGRAM = r'''
#include <cstdint>
#include <cstdio>
#include <vector>
#include "triattention_cuda/launch.h"
namespace tc = triattention::cuda;

static tc::CompactCache cache(char* base, int64_t row_bytes, int64_t capacity, int64_t heads) {
  // [B, H, C, D] contiguous: strides in bytes
  return {base, heads * capacity * row_bytes, capacity * row_bytes, row_bytes, capacity, row_bytes};
}

int main() {
  alignas(16) static char storage[64];
  char* aligned = storage;
  const int64_t B = 2, H = 3, C = 1500, K = 900;
  std::vector<tc::CompactCache> caches = {
      cache(aligned, 256, C, H),      // bf16 D 128: 128 rows per 32 KB chunk -> 8 chunks per (b, h)
      cache(aligned + 8, 256, C, H),  // an 8-byte offset view: column slices
      cache(aligned, 96, C, H),       // fp32 D 24: 341 rows per chunk -> 3 chunks
      cache(aligned, 0, C, H),        // D 0: nothing to move
  };
  std::printf("ints32k %lld\n", (long long)tc::compact_workspace_ints(caches.data(), 4, B, H, K, 32768));
  std::printf("ints0 %lld\n", (long long)tc::compact_workspace_ints(caches.data(), 4, B, H, K, 0));
  std::printf("ints_k0 %lld\n", (long long)tc::compact_workspace_ints(caches.data(), 4, B, H, 0, 32768));
  std::vector<tc::CompactCache> many(40, cache(aligned, 256, C, H));  // two launches of <= 32 caches
  std::printf("ints40 %lld\n", (long long)tc::compact_workspace_ints(many.data(), 40, B, H, K, 4096));
  std::printf("chunkable_big_row %d\n", (int)tc::compact_chunkable(cache(aligned, 8192, C, H), 4096));
  tc::Tuning t;
  std::printf("bytes_builtin %d\n", tc::compact_chunk_bytes(t, 232448));
  t.compact_chunk = 65536;
  std::printf("bytes_64k %d %d\n", tc::compact_chunk_bytes(t, 232448), tc::compact_chunk_bytes(t, 49152));
  int ws[256] = {0};
  const int64_t* idx = nullptr;
  // chunk 0 (the built-in) and chunk sizes no cache takes: nothing to launch, success
  std::printf("launch0 %d\n", (int)tc::launch_compact_chunked(caches.data(), 4, idx, B, H, K, 0, nullptr, 0));
  std::printf("launch_none %d\n",
              (int)tc::launch_compact_chunked(caches.data() + 1, 1, idx, B, H, K, 32768, nullptr, 0));
  // chunkable caches but no workspace: refused before any launch
  std::printf("launch_nows %d\n", (int)tc::launch_compact_chunked(caches.data(), 1, idx, B, H, K, 32768, nullptr, 0));
  // a real launch attempt: no driver here, so a driver error (not success, not the refusal above)
  const cudaError_t err = tc::launch_compact_chunked(caches.data(), 1, idx, B, H, K, 32768, ws, 0);
  std::printf("launch_try %d\n", (int)err);
  std::printf("invalid_value %d\n", (int)cudaErrorInvalidValue);
  return 0;
}
'''


def test_compact_launch_planning(tmp_path):
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not Path(nvcc).exists():
        pytest.skip("nvcc not found (the CUDA toolkit compiles the launchers; CI has it)")
    src = tmp_path / "plan.cu"
    src.write_text(PROGRAM)
    exe = tmp_path / "plan"
    cmd = [nvcc, "-std=c++20", "-O1", "--expt-relaxed-constexpr", "-gencode=arch=compute_90,code=sm_90",
           f"-I{ROOT / 'kernel_src'}", str(src), str(CUDA_DIR / "compact.cu"), str(CUDA_DIR / "compact_chunked.cu"),
           "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # a GPU machine behaves as this one: no device
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, env=env, timeout=60).stdout
    got = dict(line.split(" ", 1) for line in out.strip().splitlines())
    # one counter, then B * H * chunks flags of each chunkable cache: 6 * 8 (D 128) + 6 * 3 (D 24)
    assert got["ints32k"] == "67"
    assert got["ints0"] == "0" and got["ints_k0"] == "0"
    # 4 KB chunks of 256-byte rows: 16 rows, 57 chunks per (b, h); 40 caches = 32 + 8 in two launches
    assert got["ints40"] == str(2 + 40 * 6 * 57)
    assert got["chunkable_big_row"] == "0"  # a row larger than a chunk stays on the column slices
    assert got["bytes_builtin"] == "0"
    assert got["bytes_64k"] == "65536 0"  # a chunk that does not fit a block's shared memory: off
    assert got["launch0"] == "0" and got["launch_none"] == "0"
    assert got["launch_nows"] == got["invalid_value"]
    assert got["launch_try"] not in ("0", got["invalid_value"])


def _cuda_include() -> Path:
    nvcc = shutil.which("nvcc")
    for base in ([Path(nvcc).resolve().parent.parent] if nvcc else []) + [Path("/usr/local/cuda")]:
        if (base / "include" / "cuda_runtime_api.h").exists():
            return base / "include"
    pytest.skip("no CUDA headers (cuda_runtime_api.h): the CUDA toolkit is needed to compile the kernel file")


def _static_shared(m: re.Match) -> str:
    """``__shared__ T name[dims];`` -> a reference to the block's slot for it (tests/cuda_on_cpu/common.cuh)."""
    type_, name, dims = m.group(1), m.group(2), m.group(3)
    if dims:
        return f"{type_} (&{name}){dims} = ::shim::block_static<{type_}{dims}>();"
    return f"{type_}& {name} = ::shim::block_static<{type_}>();"


def _on_cpu(name: str) -> str:
    """A kernel file's source with its CUDA-only forms rewritten into tests/cuda_on_cpu/common.cuh's stand-ins."""
    src = (CUDA_DIR / name).read_text()
    src = re.sub(r"extern __shared__ (?:__align__\(\d+\) )?(unsigned char|float) (\w+)\[\];",
                 r"\1* \2 = reinterpret_cast<\1*>(::shim::block_smem());", src)
    src = re.sub(r"__shared__ ([\w:]+) (\w+)((?:\[[^\]]+\])*);", _static_shared, src)
    src = re.sub(r"(\w+)<<<(.*?)>>>\(", r"::shim::launch(\1, \2, ", src, flags=re.S)
    src = re.sub(r'asm\("sqrt\.approx\.f32 %0, %1;" : "=f"\((\w+)\) : "f"\((.*?)\)\);',
                 r"\1 = ::shim::sqrt_approx(\2);", src)
    for form in ("__shared__", "<<<", "asm("):
        assert form not in src, f"{name} has a CUDA-only form the rewrites miss: {form}"
    return src


def _run_on_cpu(tmp_path, files, check: str, cp_async: bool = True) -> list:
    """Build ``files`` (rewritten) with tests/cuda_on_cpu/``check`` and the stand-in header; its output lines."""
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no C++ compiler ({cxx!r})")
    include = _cuda_include()
    work = tmp_path / ("cp_async" if cp_async else "registers")
    work.mkdir()
    shutil.copy(ROOT / "tests" / "cuda_on_cpu" / "common.cuh", work / "common.cuh")
    sources = []
    for name in files:
        sources.append(work / name.replace(".cu", ".cpp"))
        sources[-1].write_text(_on_cpu(name))
    exe = work / "check"
    cmd = [cxx, "-std=c++20", "-O1", "-pthread", "-Wall", "-Wno-unknown-pragmas", f"-DSHIM_CP_ASYNC={int(cp_async)}",
           f"-I{work}", f"-I{CUDA_DIR}", f"-I{ROOT / 'kernel_src'}", f"-I{include}", *map(str, sources),
           str(ROOT / "tests" / "cuda_on_cpu" / check), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout.strip().splitlines()


COMPACT_CASES = ["slices_builtin", "slices_32_pipelined", "slices_256_pipelined", "slices_1024", "slices_stages",
                 "chunks_32k", "chunks_4k_mixed", "chunks_16k_sorted", "chunks_wide_rows_64k", "chunks_row_too_wide",
                 "chunks_many_caches_8k", "chunks_k_equals_c", "chunks_k_one"]


@pytest.mark.parametrize("cp_async", [True, False], ids=["cp_async", "registers"])
def test_compact_kernels_on_the_cpu(tmp_path, cp_async):
    """launch_compact under launch settings: the column slices (plain, pipelined, staged by cp.async, or its
    register fallback) and the chunks, for odd vector widths, offsets and index patterns."""
    lines = _run_on_cpu(tmp_path, ["compact.cu", "compact_chunked.cu"], "compact_check.cpp", cp_async)
    assert lines == [f"ok {name}" for name in COMPACT_CASES]


def test_score_keys_kernels_on_the_cpu(tmp_path):
    """launch_score_keys: the fast path's register and cp.async-staged loops (score_stages 1, 3, 4, 8; waves 2) with
    their shuffles, and the generic path, against OPS.md's formula in double precision."""
    lines = _run_on_cpu(tmp_path, ["score_keys.cu", "score_keys_generic.cu"], "score_check.cpp")
    assert lines and all(line.startswith("ok ") for line in lines), "\n".join(lines)
    assert len(lines) == 7 * 5


def test_select_kernels_on_the_cpu(tmp_path):
    """zscore_group_reduce (three passes over chunks of 2048) and select_topk (a radix select over chunks whose last
    block picks each bin): z-scores within 1e-5 with the same -inf pattern, top-k indices identical, with ties,
    -inf and signed zeros across chunk boundaries."""
    lines = _run_on_cpu(tmp_path, ["select.cu"], "select_check.cpp")
    assert lines == [f"ok {name}" for name in ("zscore_g1_max", "zscore_g3_mean", "zscore_g6_max", "topk_k1",
                                                "topk_k100", "topk_k2048", "topk_k_all", "topk_small")]
