// SPDX-License-Identifier: Apache-2.0
// Runs zscore_group_reduce's and select_topk's CUDA launchers (select.cu: every row split into chunks of 2048
// scores, per-chunk partials, a multi-block radix select) and kernels on the CPU (common.cuh here) against
// kernel_src/OPS.md evaluated directly: z-scores within 1e-5 with the same -inf pattern, top-k indices identical.
// Prints one line per case, "ok <case>" or "MISMATCH <case> ...". Used by tests/test_cuda_host.py.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "launch.h"
#include "triattention_math.h"

namespace tc = triattention::cuda;
namespace tmath = triattention::math;

static bool zscore_case(const std::string& name, int64_t B, int64_t Hq, int64_t N, int64_t G, bool use_max,
                        std::mt19937& rng) {
  std::normal_distribution<float> normal(2.0f, 5.0f);
  std::bernoulli_distribution keep(0.7);
  std::vector<float> scores(static_cast<size_t>(B * Hq * N));
  for (auto& x : scores) x = normal(rng);
  std::vector<char> cand_bytes(static_cast<size_t>(B * N));  // bool storage
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n) cand_bytes[b * N + n] = b == 1 ? 0 : b == 2 ? 1 : keep(rng);  // row 1: none
  const int64_t Hkv = Hq / G, chunks = tc::select_chunks(N);
  std::vector<float> out(static_cast<size_t>(B * Hkv * N), NAN);
  std::vector<double> part_sum(static_cast<size_t>(2 * B * Hq * chunks));
  std::vector<int64_t> part_count(static_cast<size_t>(B * chunks));
  const tc::ZscoreArgs args{out.data(), scores.data(), reinterpret_cast<const bool*>(cand_bytes.data()), B, Hq, N, G,
                            use_max, part_sum.data(), part_count.data()};
  if (tc::launch_zscore_group_reduce(args, nullptr) != cudaSuccess) {
    std::printf("MISMATCH %s: launcher error\n", name.c_str());
    return false;
  }
  for (int64_t b = 0; b < B; ++b) {
    std::vector<float> mean(static_cast<size_t>(Hq)), stdev(static_cast<size_t>(Hq));
    int64_t count = 0;
    for (int64_t n = 0; n < N; ++n) count += cand_bytes[b * N + n];
    for (int64_t h = 0; h < Hq; ++h) {
      double sum = 0, sq = 0;
      const float* s = scores.data() + (b * Hq + h) * N;
      for (int64_t n = 0; n < N; ++n)
        if (cand_bytes[b * N + n]) sum += s[n];
      mean[h] = count ? tmath::zs_mean(sum, count) : 0.0f;
      for (int64_t n = 0; n < N; ++n)
        if (cand_bytes[b * N + n]) sq += tmath::sq_dev(s[n], mean[h]);
      stdev[h] = count ? tmath::zs_std(sq, count) : 1.0f;
    }
    for (int64_t g = 0; g < Hkv; ++g)
      for (int64_t n = 0; n < N; ++n) {
        const float got = out[(b * Hkv + g) * N + n];
        float want = -INFINITY;
        if (count && cand_bytes[b * N + n]) {
          float acc = tmath::group_init(use_max);
          for (int64_t h = g * G; h < (g + 1) * G; ++h)
            acc = tmath::group_step(acc, tmath::zscore(scores[(b * Hq + h) * N + n], mean[h], stdev[h]),
                                    use_max);
          want = tmath::group_finish(acc, static_cast<int>(G), use_max);
        }
        const bool same = std::isinf(want) ? got == want : std::fabs(got - want) <= 1e-5f * (1 + std::fabs(want));
        if (!same) {
          std::printf("MISMATCH %s: b %lld g %lld n %lld: %g vs %g\n", name.c_str(), static_cast<long long>(b),
                      static_cast<long long>(g), static_cast<long long>(n), got, want);
          return false;
        }
      }
  }
  std::printf("ok %s\n", name.c_str());
  return true;
}

static bool topk_case(const std::string& name, int64_t R, int64_t N, int64_t k, std::mt19937& rng) {
  std::uniform_int_distribution<int> small(-3, 3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> scores(static_cast<size_t>(R * N));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t n = 0; n < N; ++n) {
      float& x = scores[r * N + n];
      switch (r % 5) {
        case 0: x = static_cast<float>(small(rng)); break;  // ties everywhere, crossing chunk boundaries
        case 1: x = n % 997 == 0 ? normal(rng) : -INFINITY; break;  // mostly -inf: -inf entries get selected
        case 2: x = -INFINITY; break;
        case 3: x = normal(rng); break;
        default: x = n % 2 ? -0.0f : 0.0f; break;  // -0.0 and +0.0 are one value
      }
    }
  const tc::TopkWorkspace layout(R, N);
  std::vector<int> ws(static_cast<size_t>(layout.total), 0);
  std::vector<int64_t> out(static_cast<size_t>(R * k), -1);
  if (tc::launch_select_topk(out.data(), scores.data(), R, N, k, ws.data(), nullptr) != cudaSuccess) {
    std::printf("MISMATCH %s: launcher error\n", name.c_str());
    return false;
  }
  for (int64_t r = 0; r < R; ++r) {
    std::vector<int64_t> order(static_cast<size_t>(N));
    std::iota(order.begin(), order.end(), 0);
    const float* s = scores.data() + r * N;
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return tmath::ranks_before(s[a], a, s[b], b); });
    std::vector<int64_t> want(order.begin(), order.begin() + k);
    std::sort(want.begin(), want.end());
    if (!std::equal(want.begin(), want.end(), out.begin() + r * k)) {
      std::printf("MISMATCH %s: row %lld\n", name.c_str(), static_cast<long long>(r));
      return false;
    }
  }
  std::printf("ok %s\n", name.c_str());
  return true;
}

int main() {
  std::mt19937 rng(3);
  bool ok = true;
  // 5000 scores: three chunks of 2048, the last partial; batch rows with some, no and all candidates
  ok &= zscore_case("zscore_g1_max", 3, 6, 5000, 1, true, rng);
  ok &= zscore_case("zscore_g3_mean", 3, 6, 5000, 3, false, rng);
  ok &= zscore_case("zscore_g6_max", 3, 6, 83, 6, true, rng);
  ok &= topk_case("topk_k1", 5, 5000, 1, rng);
  ok &= topk_case("topk_k100", 5, 5000, 100, rng);
  ok &= topk_case("topk_k2048", 5, 5000, 2048, rng);
  ok &= topk_case("topk_k_all", 5, 5000, 5000, rng);
  ok &= topk_case("topk_small", 5, 70, 33, rng);
  return ok ? 0 : 1;
}
