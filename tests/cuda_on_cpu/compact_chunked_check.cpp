// SPDX-License-Identifier: Apache-2.0
// Runs compact_chunked.cu's launcher and kernel on the CPU (common.cuh here: blocks in order, threads as
// std::threads) against an out-of-place gather, for the layouts and index patterns the GPU path meets.
// Prints one line per case, "ok <case>" or "MISMATCH <case> ...". Used by tests/test_cuda_host.py.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "launch.h"

namespace tc = triattention::cuda;

struct Case {
  std::string name;
  int64_t B, H, C, K;
  std::vector<int64_t> row_bytes;  // one cache each, contiguous [B, H, C + 3, row] buffers (3 sentinel rows)
  int chunk_bytes;
  std::string pattern;  // "far": anywhere in [j, C); "sorted"; "mixed": far, identity, all-last, sorted row sets
};

static bool run(const Case& k, std::mt19937_64& rng) {
  const int64_t rows = k.C + 3, bh = k.B * k.H;
  std::vector<std::vector<unsigned char>> data, expected;
  std::vector<tc::CompactCache> caches;
  for (int64_t rb : k.row_bytes) {
    std::vector<unsigned char> d(static_cast<size_t>(bh * rows * rb) + 16);
    for (auto& x : d) x = static_cast<unsigned char>(rng());
    data.push_back(std::move(d));
  }
  std::vector<int64_t> idx(static_cast<size_t>(bh * k.K));
  for (int64_t r = 0; r < bh; ++r) {
    const std::string p = k.pattern == "mixed" ? (r % 4 == 0 ? "far" : r % 4 == 1 ? "identity"
                                                  : r % 4 == 2 ? "last" : "sorted")
                                               : k.pattern;
    std::vector<int64_t> keep;
    if (p == "sorted") {  // K of the C slots, ascending
      std::vector<int64_t> all(static_cast<size_t>(k.C));
      for (int64_t i = 0; i < k.C; ++i) all[i] = i;
      std::shuffle(all.begin(), all.end(), rng);
      keep.assign(all.begin(), all.begin() + k.K);
      std::sort(keep.begin(), keep.end());
    }
    for (int64_t j = 0; j < k.K; ++j) {
      int64_t v = j;
      if (p == "far") v = j + static_cast<int64_t>(rng() % static_cast<uint64_t>(k.C - j));
      if (p == "last") v = k.C - 1;
      if (p == "sorted") v = keep[j];
      idx[r * k.K + j] = v;
    }
  }
  for (size_t c = 0; c < data.size(); ++c) {
    const int64_t rb = k.row_bytes[c];
    unsigned char* base = data[c].data() + 16;  // 16-byte aligned like a GPU allocation
    base -= reinterpret_cast<uintptr_t>(base) % 16;
    caches.push_back({reinterpret_cast<char*>(base), k.H * rows * rb, rows * rb, rb, k.C, rb});
    std::vector<unsigned char> e(data[c]);
    unsigned char* eb = e.data() + (base - data[c].data());
    for (int64_t r = 0; r < bh; ++r)
      for (int64_t j = 0; j < k.K; ++j)
        std::memcpy(eb + (r * rows + j) * rb, base + (r * rows + idx[r * k.K + j]) * rb, rb);
    expected.push_back(std::move(e));
  }
  const int64_t n = static_cast<int64_t>(caches.size());
  std::vector<int> ws(static_cast<size_t>(tc::compact_workspace_ints(caches.data(), n, k.B, k.H, k.K, k.chunk_bytes)));
  const cudaError_t err = tc::launch_compact_chunked(caches.data(), n, idx.data(), k.B, k.H, k.K, k.chunk_bytes,
                                                     ws.empty() ? nullptr : ws.data(), nullptr);
  if (err != cudaSuccess) {
    std::printf("MISMATCH %s: launcher returned %d\n", k.name.c_str(), static_cast<int>(err));
    return false;
  }
  for (size_t c = 0; c < data.size(); ++c) {
    if (data[c] != expected[c]) {
      size_t at = 0;
      while (data[c][at] == expected[c][at]) ++at;
      std::printf("MISMATCH %s: cache %zu differs at byte %zu\n", k.name.c_str(), c, at);
      return false;
    }
  }
  // every flag raised: one per chunk of each launch (the counters count the tickets taken)
  for (int x : ws)
    if (x == 0) {
      std::printf("MISMATCH %s: a workspace int was never set\n", k.name.c_str());
      return false;
    }
  std::printf("ok %s\n", k.name.c_str());
  return true;
}

int main() {
  std::mt19937_64 rng(7);
  const std::vector<Case> cases = {
      // bf16 D 128 rows (16 units) and fp32 D 24 rows (6 units: a row boundary inside a thread's step)
      {"far_32k", 2, 3, 700, 420, {256, 96}, 32768, "far"},
      {"mixed_4k", 2, 2, 500, 300, {256, 96}, 4096, "mixed"},
      {"sorted_16k", 1, 2, 600, 512, {256}, 16384, "sorted"},
      // rows of 8 KB: 512 units, more than the block's threads (a step moves within one row)
      {"wide_rows_64k", 1, 2, 40, 30, {8192, 4096}, 65536, "far"},
      // 35 caches: two launches (32 + 3), each with its own counter
      {"many_caches_8k", 1, 1, 90, 60, std::vector<int64_t>(35, 128), 8192, "mixed"},
      // K == C (nothing dropped: identity everywhere except where "far" moves rows) and K == 1
      {"k_equals_c", 1, 2, 64, 64, {256}, 4096, "far"},
      {"k_one", 2, 1, 50, 1, {256}, 4096, "far"},
  };
  int failed = 0;
  for (const Case& c : cases) failed += run(c, rng) ? 0 : 1;
  return failed == 0 ? 0 : 1;
}
