// SPDX-License-Identifier: Apache-2.0
// Runs compact_'s CUDA launcher (compact.cu's column slices and compact_chunked.cu's chunks) and kernels on the CPU
// (common.cuh here: blocks in order, threads as std::threads) against an out-of-place gather, under the launch
// settings of TRIATTENTION_CUDA_TUNE, for the layouts and index patterns a GPU meets. Prints one line per case,
// "ok <case>" or "MISMATCH <case> ...". Used by tests/test_cuda_host.py.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "launch.h"

namespace tc = triattention::cuda;

struct Layout {
  int64_t row_bytes;
  int64_t offset;  // bytes from a 16-byte aligned base (8: only 8-byte vectors fit, 2: only 2-byte ...)
  int64_t pad;     // bytes between rows beyond row_bytes
};

struct Case {
  std::string name;
  int64_t B, H, C, K;
  std::vector<Layout> caches;
  std::string tune;     // TRIATTENTION_CUDA_TUNE
  std::string pattern;  // "far": anywhere in [j, C); "sorted"; "mixed": far, identity, all-last, sorted row sets
};

static std::vector<int64_t> indices(const Case& k, std::mt19937_64& rng) {
  std::vector<int64_t> idx(static_cast<size_t>(k.B * k.H * k.K));
  for (int64_t r = 0; r < k.B * k.H; ++r) {
    const std::string p = k.pattern != "mixed" ? k.pattern
                          : r % 4 == 0         ? "far"
                          : r % 4 == 1         ? "identity"
                          : r % 4 == 2         ? "last"
                                               : "sorted";
    std::vector<int64_t> all(static_cast<size_t>(k.C));
    for (int64_t i = 0; i < k.C; ++i) all[i] = i;
    std::shuffle(all.begin(), all.end(), rng);
    std::sort(all.begin(), all.begin() + k.K);
    for (int64_t j = 0; j < k.K; ++j) {
      int64_t v = j;
      if (p == "far") v = j + static_cast<int64_t>(rng() % static_cast<uint64_t>(k.C - j));
      if (p == "last") v = k.C - 1;
      if (p == "sorted") v = all[j];
      idx[r * k.K + j] = v;
    }
  }
  return idx;
}

static bool run(const Case& k, std::mt19937_64& rng) {
  tc::Tuning tuning;
  const std::string bad = tc::parse_tuning(k.tune.c_str(), tuning);
  if (!bad.empty()) {
    std::printf("MISMATCH %s: %s\n", k.name.c_str(), bad.c_str());
    return false;
  }
  const int64_t rows = k.C + 3, bh = k.B * k.H;  // 3 sentinel rows past C
  const std::vector<int64_t> idx = indices(k, rng);
  std::vector<std::vector<unsigned char>> data, expected;
  std::vector<tc::CompactCache> caches;
  for (const Layout& l : k.caches) {
    const int64_t stride_c = l.row_bytes + l.pad;
    std::vector<unsigned char> d(static_cast<size_t>(bh * rows * stride_c + 32));
    for (auto& x : d) x = static_cast<unsigned char>(rng());
    unsigned char* base = d.data() + 16 - reinterpret_cast<uintptr_t>(d.data()) % 16 + l.offset;
    caches.push_back({reinterpret_cast<char*>(base), k.H * rows * stride_c, rows * stride_c, stride_c, k.C,
                      l.row_bytes});
    std::vector<unsigned char> e(d);
    unsigned char* eb = e.data() + (base - d.data());
    for (int64_t r = 0; r < bh; ++r)
      for (int64_t j = 0; j < k.K; ++j)
        std::memcpy(eb + (r * rows + j) * stride_c, base + (r * rows + idx[r * k.K + j]) * stride_c, l.row_bytes);
    data.push_back(std::move(d));
    expected.push_back(std::move(e));
  }
  const int64_t n = static_cast<int64_t>(caches.size()), max_smem = 232448;  // an H200's opt-in shared memory
  // As ops.cpp sizes it: zeroed ints for the chunked path, none otherwise.
  const int chunk_bytes = tc::compact_chunk_bytes(tuning, max_smem);
  std::vector<int> ws(static_cast<size_t>(tc::compact_workspace_ints(caches.data(), n, k.B, k.H, k.K, chunk_bytes)));
  const cudaError_t err = tc::launch_compact(caches.data(), n, idx.data(), k.B, k.H, k.K, 132, max_smem, tuning,
                                             ws.empty() ? nullptr : ws.data(), nullptr);
  if (err != cudaSuccess) {
    std::printf("MISMATCH %s: launcher returned %d\n", k.name.c_str(), static_cast<int>(err));
    return false;
  }
  for (size_t c = 0; c < data.size(); ++c) {
    if (data[c] != expected[c]) {  // rows < K, untouched rows >= K, sentinel rows and padding alike
      size_t at = 0;
      while (data[c][at] == expected[c][at]) ++at;
      std::printf("MISMATCH %s: cache %zu differs at byte %zu\n", k.name.c_str(), c, at);
      return false;
    }
  }
  if (std::count(ws.begin(), ws.end(), 0) != 0) {  // each launch's counter and every chunk's flag were set
    std::printf("MISMATCH %s: a workspace int was never set\n", k.name.c_str());
    return false;
  }
  std::printf("ok %s\n", k.name.c_str());
  return true;
}

int main() {
  std::mt19937_64 rng(7);
  const Layout bf16_128{256, 0, 0}, fp32_24{96, 0, 0}, offset8{256, 8, 16}, odd2{126, 2, 4}, fp32_5{20, 4, 12};
  const std::vector<Case> cases = {
      // column slices, built-in and tuned (compact_stages: tiles staged by cp.async for 16-byte units, else the
      // register path)
      {"slices_builtin", 2, 3, 300, 200, {bf16_128, offset8, odd2, fp32_5}, "", "mixed"},
      // K = 1025: with 32-byte slices of 16-byte units a pipelined tile is 512 rows, and the last one holds one row
      {"slices_32_pipelined", 2, 2, 1200, 1025, {bf16_128, odd2, fp32_24}, "compact_slice=32,compact_pipeline=1",
       "far"},
      {"slices_256_pipelined", 1, 3, 1200, 1100, {bf16_128, offset8}, "compact_slice=256,compact_pipeline=1",
       "sorted"},
      {"slices_1024", 1, 2, 300, 250, {Layout{4096, 0, 0}, fp32_24}, "compact_slice=1024", "mixed"},
      {"slices_stages", 1, 2, 400, 300, {bf16_128, offset8}, "compact_stages=3", "far"},
      // chunks: bf16 D 128 rows (16 units) and fp32 D 24 rows (6 units: a row boundary inside a thread's step);
      // the unaligned caches of the same call go to the column slices
      {"chunks_32k", 2, 3, 700, 420, {bf16_128, fp32_24, offset8, odd2}, "compact_chunk=32768", "far"},
      {"chunks_4k_mixed", 2, 2, 500, 300, {bf16_128, fp32_24}, "compact_chunk=4096", "mixed"},
      {"chunks_16k_sorted", 1, 2, 600, 512, {bf16_128}, "compact_chunk=16384,compact_pipeline=1", "sorted"},
      // rows of 8 KB: 512 units, more than a block's threads (a step moves within one row)
      {"chunks_wide_rows_64k", 1, 2, 40, 30, {Layout{8192, 0, 0}, Layout{4096, 0, 16}}, "compact_chunk=65536", "far"},
      // a row larger than a chunk stays on the column slices
      {"chunks_row_too_wide", 1, 2, 40, 30, {Layout{8192, 0, 0}, bf16_128}, "compact_chunk=4096", "far"},
      // 35 caches: two chunked launches (32 + 3), each with its own counter
      {"chunks_many_caches_8k", 1, 1, 90, 60, std::vector<Layout>(35, Layout{128, 0, 0}), "compact_chunk=8192",
       "mixed"},
      // K == C (no slot dropped) and K == 1
      {"chunks_k_equals_c", 1, 2, 64, 64, {bf16_128}, "compact_chunk=4096", "far"},
      {"chunks_k_one", 2, 1, 50, 1, {bf16_128, offset8}, "compact_chunk=4096", "far"},
  };
  int failed = 0;
  for (const Case& c : cases) failed += run(c, rng) ? 0 : 1;
  return failed == 0 ? 0 : 1;
}
