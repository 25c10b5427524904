// SPDX-License-Identifier: Apache-2.0
// Runs score_keys' CUDA launcher (score_keys.cu's fast path, register and staged, and score_keys_generic.cu) and
// kernels on the CPU (common.cuh here) against a double-precision evaluation of kernel_src/OPS.md's formula, under
// TRIATTENTION_CUDA_TUNE settings. Prints one line per case and setting, "ok <case> <tune>" or "MISMATCH ...".
// Used by tests/test_cuda_host.py.
#include <cmath>
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
  tc::KeyType type;
  int64_t B, Hkv, G, O, N, D, R;
  bool interleaved;
  int64_t offset;  // elements before the first key (a multiple of 4 keeps the fast path's vector loads aligned)
  int64_t pad;     // elements between key rows beyond D
};

static uint16_t to_bf16(float x) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static float from_bf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
static uint16_t to_f16(float x) {  // |x| < 8 here: normal halves, truncated mantissa (exact to store and read)
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const int exp = static_cast<int>((u >> 23) & 0xff) - 127 + 15;
  if (exp <= 0) return static_cast<uint16_t>(sign);  // tiny: zero
  return static_cast<uint16_t>(sign | (static_cast<uint32_t>(exp) << 10) | ((u >> 13) & 0x3ffu));
}
static float from_f16(uint16_t h) {
  const int exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  const float v = exp == 0 ? std::ldexp(static_cast<float>(man), -24)
                           : std::ldexp(static_cast<float>(man | 0x400), exp - 25);
  return (h & 0x8000) ? -v : v;
}

static int run(const Case& k, const std::vector<std::string>& tunes, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t Hq = k.Hkv * k.G, ks_n = k.D + k.pad, ks_h = k.N * ks_n, ks_b = k.Hkv * ks_h;
  const int64_t count = k.offset + k.B * ks_b;
  std::vector<float> keys(static_cast<size_t>(count));  // the values the kernel sees (rounded to the dtype)
  std::vector<uint16_t> half_bits(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const float x = normal(rng);
    if (k.type == tc::KeyType::kBFloat16) {
      half_bits[i] = to_bf16(x);
      keys[i] = from_bf16(half_bits[i]);
    } else if (k.type == tc::KeyType::kFloat16) {
      half_bits[i] = to_f16(x);
      keys[i] = from_f16(half_bits[i]);
    } else {
      keys[i] = x;
    }
  }
  std::vector<float> trig(static_cast<size_t>(k.B * Hq * k.O * k.D)), norm(static_cast<size_t>(k.B * Hq * k.R / 2));
  for (auto& x : trig) x = normal(rng);
  for (auto& x : norm) x = normal(rng);
  std::vector<double> ref(static_cast<size_t>(k.B * Hq * k.N));
  double scale = 0;
  for (int64_t b = 0; b < k.B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t n = 0; n < k.N; ++n) {
        const float* key = keys.data() + k.offset + b * ks_b + (h / k.G) * ks_h + n * ks_n;
        double best = -INFINITY, norms = 0;
        for (int64_t f = 0; f < k.R / 2; ++f) {
          const double a = key[k.interleaved ? 2 * f : f], c = key[k.interleaved ? 2 * f + 1 : f + k.R / 2];
          norms += norm[(b * Hq + h) * (k.R / 2) + f] * std::sqrt(a * a + c * c);
        }
        for (int64_t o = 0; o < k.O; ++o) {
          double dot = 0;
          const float* w = trig.data() + ((b * Hq + h) * k.O + o) * k.D;
          for (int64_t d = 0; d < k.D; ++d) dot += static_cast<double>(key[d]) * w[d];
          best = std::max(best, dot);
        }
        ref[(b * Hq + h) * k.N + n] = best + norms;
        scale = std::max(scale, std::fabs(best + norms));
      }
  int failed = 0;
  for (const std::string& tune : tunes) {
    tc::Tuning tuning;
    const std::string bad = tc::parse_tuning(tune.c_str(), tuning);
    std::vector<float> out(ref.size(), NAN);
    const void* key_ptr = k.type == tc::KeyType::kFloat32 ? static_cast<const void*>(keys.data() + k.offset)
                                                          : static_cast<const void*>(half_bits.data() + k.offset);
    const tc::ScoreKeysArgs args{out.data(), key_ptr, k.type, trig.data(), norm.data(), k.B, k.Hkv, k.N, k.D, k.G,
                                 k.O, k.R, k.interleaved, ks_b, ks_h, ks_n};
    // 4 multiprocessors: a few blocks per (b, kv head), so blocks stride over steps as on a GPU
    const cudaError_t err =
        bad.empty() ? tc::launch_score_keys(args, 4, 232448, tuning, nullptr) : cudaErrorInvalidValue;
    size_t worst = 0;
    double worst_err = -1;
    for (size_t i = 0; i < ref.size(); ++i) {
      const double tol = 1e-5 * (std::fabs(ref[i]) + scale);  // as the Python contract tests
      const double e = std::isnan(out[i]) ? INFINITY : std::fabs(out[i] - ref[i]) / tol;
      if (e > worst_err) worst_err = e, worst = i;
    }
    const char* label = tune.empty() ? "built-in" : tune.c_str();
    if (err != cudaSuccess || worst_err > 1.0) {
      std::printf("MISMATCH %s %s: err %d, worst at %zu: %g vs %g\n", k.name.c_str(), label, static_cast<int>(err),
                  worst, static_cast<double>(out[worst]), ref[worst]);
      ++failed;
    } else {
      std::printf("ok %s %s\n", k.name.c_str(), label);
    }
  }
  return failed;
}

int main() {
  std::mt19937 rng(11);
  using T = tc::KeyType;
  const std::vector<std::string> tunes = {"", "score_stages=1", "score_stages=3", "score_stages=4,score_waves=2",
                                          "score_stages=8"};
  const std::vector<Case> cases = {
      // the fast path: D 64/128, full rotary, O 1, G <= 8, 4-element aligned rows (a strided view here)
      {"fast_bf16_d128_g4", T::kBFloat16, 1, 2, 4, 1, 1000, 128, 128, false, 8, 16},
      {"fast_f16_d64_g8_interleaved", T::kFloat16, 2, 1, 8, 1, 333, 64, 64, true, 4, 4},
      {"fast_f32_d128_g3", T::kFloat32, 1, 2, 3, 1, 257, 128, 128, false, 0, 0},
      {"fast_bf16_d64_g1", T::kBFloat16, 2, 3, 1, 1, 70, 64, 64, false, 0, 8},
      {"fast_f16_d128_g6_interleaved", T::kFloat16, 1, 1, 6, 1, 129, 128, 128, true, 0, 0},
      // the generic path: other D, offsets (O > 1), partial rotary, misaligned rows
      {"generic_f32_d96_o3_r48", T::kFloat32, 1, 2, 2, 3, 150, 96, 48, true, 0, 0},
      {"generic_bf16_misaligned", T::kBFloat16, 1, 2, 4, 1, 100, 128, 128, false, 2, 0},
  };
  int failed = 0;
  for (const Case& c : cases) failed += run(c, tunes, rng);
  return failed == 0 ? 0 : 1;
}
