// SPDX-License-Identifier: Apache-2.0
// CPU implementations of the ops in kernel_src/OPS.md, parallelised with at::parallel_for.
#include <ATen/Parallel.h>
#include <torch/all.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../triattention_checks.h"
#include "../triattention_math.h"

namespace tmath = triattention::math;

namespace {

constexpr int64_t kTileKeys = 16;  // keys per tile; the inner loops run over this axis and vectorize

// x86-64 builds carry an AVX2/FMA/F16C clone of the hot loops, picked at load time (GCC ifunc); the default
// clone is baseline SSE2, so one .so serves every x86-64 CPU.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define TRIATT_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define TRIATT_CLONES
#endif
#define TRIATT_ALWAYS_INLINE inline __attribute__((always_inline))

// Keys [nt][D] (row stride ld) -> transposed fp32 tile x[D][TK]; rows nt..TK-1 are zero.
template <typename load_t, typename F>
TRIATT_ALWAYS_INLINE void transpose_tile(const load_t* rows, int64_t ld, int64_t nt, int64_t D, float* x,
                                         F to_float) {
  for (int64_t j = 0; j < kTileKeys; ++j) {
    if (j < nt) {
      const load_t* row = rows + j * ld;
      for (int64_t d = 0; d < D; ++d) x[d * kTileKeys + j] = to_float(row[d]);
    } else {
      for (int64_t d = 0; d < D; ++d) x[d * kTileKeys + j] = 0.0f;
    }
  }
}

TRIATT_CLONES void load_tile_f32(const float* rows, int64_t ld, int64_t nt, int64_t D, float* x) {
  transpose_tile(rows, ld, nt, D, x, [](float v) { return v; });
}

TRIATT_CLONES void load_tile_bf16(const uint16_t* rows, int64_t ld, int64_t nt, int64_t D, float* x) {
  transpose_tile(rows, ld, nt, D, x, [](uint16_t v) {
    uint32_t u = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
  });
}

// c10's bit-level conversion: no libgcc __extendhfsf2 (GCC 12 symbol version, not manylinux_2_28).
TRIATT_CLONES void load_tile_f16(const uint16_t* rows, int64_t ld, int64_t nt, int64_t D, float* x) {
  transpose_tile(rows, ld, nt, D, x, [](uint16_t v) { return c10::detail::fp16_ieee_to_fp32_value(v); });
}

// 8 fp32 lanes (GCC vector extension): one ymm register in the AVX2 clone, two xmm in the SSE2 one.
typedef float vf8 __attribute__((vector_size(32)));
static_assert(kTileKeys == 16, "dot_block handles a tile as two vf8");
TRIATT_ALWAYS_INLINE vf8 load8(const float* p) {
  vf8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
TRIATT_ALWAYS_INLINE void store8(float* p, vf8 v) { std::memcpy(p, &v, sizeof(v)); }

// acc[GO][TK] = w[GO][F] . x[F][TK]: each x row is loaded once for all GO weight rows.
template <int GO>
TRIATT_ALWAYS_INLINE void dot_block(const float* x, int64_t F, const float* w, float* acc) {
  vf8 lo[GO], hi[GO];
  for (int r = 0; r < GO; ++r) lo[r] = hi[r] = vf8{};
  for (int64_t f = 0; f < F; ++f) {
    const vf8 x0 = load8(x + f * kTileKeys), x1 = load8(x + f * kTileKeys + 8);
    for (int r = 0; r < GO; ++r) {
      const float wf = w[r * F + f];
      lo[r] = tmath::dot_acc(lo[r], x0, wf);
      hi[r] = tmath::dot_acc(hi[r], x1, wf);
    }
  }
  for (int r = 0; r < GO; ++r) {
    store8(acc + r * kTileKeys, lo[r]);
    store8(acc + r * kTileKeys + 8, hi[r]);
  }
}

// One tile of TK keys for one kv head. x holds the D key features followed by R/2 free rows that receive the
// pair norms; w holds, per (q head, offset), the trig weights followed by the norm weights, so that
// out[h][j] = max_o <x_j, w[h, o]> (the norm term does not depend on o).
TRIATT_CLONES void score_tile(float* x, int64_t D, int64_t half, bool interleaved, const float* w, int64_t G,
                              int64_t O, float* acc, float* out) {
  for (int64_t f = 0; f < half; ++f) {
    const float* a = x + tmath::pair_first(f, half, interleaved) * kTileKeys;
    const float* c = x + tmath::pair_second(f, half, interleaved) * kTileKeys;
    float* o = x + (D + f) * kTileKeys;
    for (int64_t j = 0; j < kTileKeys; ++j) o[j] = tmath::pair_norm(a[j], c[j]);
  }
  const int64_t F = D + half, GO = G * O;
  for (int64_t r0 = 0; r0 < GO; r0 += 8) {
    const float* wr = w + r0 * F;
    float* ar = acc + r0 * kTileKeys;
    switch (std::min<int64_t>(8, GO - r0)) {
      case 1: dot_block<1>(x, F, wr, ar); break;
      case 2: dot_block<2>(x, F, wr, ar); break;
      case 3: dot_block<3>(x, F, wr, ar); break;
      case 4: dot_block<4>(x, F, wr, ar); break;
      case 5: dot_block<5>(x, F, wr, ar); break;
      case 6: dot_block<6>(x, F, wr, ar); break;
      case 7: dot_block<7>(x, F, wr, ar); break;
      default: dot_block<8>(x, F, wr, ar); break;
    }
  }
  for (int64_t h = 0; h < G; ++h) {
    float* o = out + h * kTileKeys;
    const float* a = acc + h * O * kTileKeys;
    for (int64_t j = 0; j < kTileKeys; ++j) o[j] = a[j];
    for (int64_t oo = 1; oo < O; ++oo)
      for (int64_t j = 0; j < kTileKeys; ++j) o[j] = tmath::offset_max(o[j], a[oo * kTileKeys + j]);
  }
}

template <typename scalar_t>
void load_tile(const scalar_t* rows, int64_t ld, int64_t nt, int64_t D, float* x) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    load_tile_f32(rows, ld, nt, D, x);
  } else if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    load_tile_bf16(reinterpret_cast<const uint16_t*>(rows), ld, nt, D, x);
  } else {
    static_assert(std::is_same_v<scalar_t, at::Half>, "keys must be f32, bf16 or f16");
    load_tile_f16(reinterpret_cast<const uint16_t*>(rows), ld, nt, D, x);
  }
}

template <typename scalar_t>
void score_keys_impl(float* out, const scalar_t* keys, const float* trig, const float* norm_w, int64_t B,
                     int64_t Hkv, int64_t N, int64_t D, int64_t G, int64_t O, int64_t R,
                     const std::vector<int64_t>& kstride, bool interleaved) {
  const int64_t Hq = Hkv * G;
  const int64_t half = R / 2;
  const int64_t F = D + half;
  // Augmented weights [B, Hq, O, D + R/2]: trig weights then the head's norm weights.
  std::vector<float> w(B * Hq * O * F);
  for (int64_t bh = 0; bh < B * Hq; ++bh)
    for (int64_t o = 0; o < O; ++o) {
      float* dst = w.data() + (bh * O + o) * F;
      std::copy(trig + (bh * O + o) * D, trig + (bh * O + o + 1) * D, dst);
      std::copy(norm_w + bh * half, norm_w + (bh + 1) * half, dst + D);
    }
  const int64_t tiles = (N + kTileKeys - 1) / kTileKeys;
  at::parallel_for(0, B * Hkv * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> x(F * kTileKeys), acc(G * O * kTileKeys), res(G * kTileKeys);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t tile = item % tiles;
      const int64_t g = (item / tiles) % Hkv;
      const int64_t b = item / (tiles * Hkv);
      const int64_t n0 = tile * kTileKeys;
      const int64_t nt = std::min(kTileKeys, N - n0);
      load_tile(keys + b * kstride[0] + g * kstride[1] + n0 * kstride[2], kstride[2], nt, D, x.data());
      score_tile(x.data(), D, half, interleaved, w.data() + (b * Hq + g * G) * O * F, G, O, acc.data(),
                 res.data());
      for (int64_t hh = 0; hh < G; ++hh) {
        float* orow = out + (b * Hq + g * G + hh) * N + n0;
        std::copy(res.data() + hh * kTileKeys, res.data() + hh * kTileKeys + nt, orow);
      }
    }
  });
}

}  // namespace

void score_keys(torch::Tensor& out, torch::Tensor const& keys, torch::Tensor const& trig_weights,
                torch::Tensor const& norm_weights, int64_t rotary_dim, bool interleaved) {
  triattention::checks::score_keys(out, keys, trig_weights, norm_weights, rotary_dim, c10::DeviceType::CPU);
  const int64_t B = keys.size(0), Hkv = keys.size(1), N = keys.size(2), D = keys.size(3);
  const int64_t Hq = trig_weights.size(1), O = trig_weights.size(2);
  if (out.numel() == 0) return;
  const std::vector<int64_t> ks(keys.strides().begin(), keys.strides().end());
  auto run = [&](auto tag) {
    using scalar_t = decltype(tag);
    score_keys_impl<scalar_t>(out.data_ptr<float>(), keys.data_ptr<scalar_t>(), trig_weights.data_ptr<float>(),
                              norm_weights.data_ptr<float>(), B, Hkv, N, D, Hq / Hkv, O, rotary_dim, ks,
                              interleaved);
  };
  triattention::checks::with_key_type(keys.scalar_type(), run);
}

void zscore_group_reduce(torch::Tensor& out, torch::Tensor const& scores, torch::Tensor const& candidates,
                         int64_t group_size, bool use_max) {
  triattention::checks::zscore_group_reduce(out, scores, candidates, group_size, c10::DeviceType::CPU);
  const int64_t B = scores.size(0), Hq = scores.size(1), N = scores.size(2);
  const int64_t Hkv = Hq / group_size;
  if (out.numel() == 0) return;
  const float* s = scores.data_ptr<float>();
  const bool* cand = candidates.data_ptr<bool>();
  float* o = out.data_ptr<float>();
  const int G = static_cast<int>(group_size);
  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / Hkv, g = item % Hkv;
      const bool* c = cand + b * N;
      float* orow = o + item * N;
      int64_t count = 0;
      for (int64_t n = 0; n < N; ++n) count += c[n] ? 1 : 0;
      if (count == 0) {
        std::fill(orow, orow + N, -INFINITY);
        continue;
      }
      std::fill(orow, orow + N, tmath::group_init(use_max));
      for (int64_t hh = 0; hh < G; ++hh) {
        const float* srow = s + (b * Hq + g * G + hh) * N;
        double sum = 0.0;
        for (int64_t n = 0; n < N; ++n) sum += c[n] ? (double)srow[n] : 0.0;
        const float mean = tmath::zs_mean(sum, count);
        double sq = 0.0;
        for (int64_t n = 0; n < N; ++n) sq += c[n] ? tmath::sq_dev(srow[n], mean) : 0.0;
        const float sd = tmath::zs_std(sq, count);
        for (int64_t n = 0; n < N; ++n) orow[n] = tmath::group_step(orow[n], tmath::zscore(srow[n], mean, sd), use_max);
      }
      for (int64_t n = 0; n < N; ++n) orow[n] = c[n] ? tmath::group_finish(orow[n], G, use_max) : -INFINITY;
    }
  });
}

void select_topk(torch::Tensor& out, torch::Tensor const& scores, int64_t k) {
  triattention::checks::select_topk(out, scores, k, c10::DeviceType::CPU);
  const int64_t R = scores.size(0), N = scores.size(1);
  if (out.numel() == 0) return;
  const float* s = scores.data_ptr<float>();
  int64_t* o = out.data_ptr<int64_t>();
  at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> idx(N);
    for (int64_t r = begin; r < end; ++r) {
      const float* row = s + r * N;
      for (int64_t n = 0; n < N; ++n)
        TORCH_CHECK(!std::isnan(row[n]), "select_topk: NaN score at row ", r, ", column ", n);
      std::iota(idx.begin(), idx.end(), int64_t{0});
      if (k < N) {
        std::nth_element(idx.begin(), idx.begin() + k, idx.end(), [row](int64_t a, int64_t b) {
          return tmath::ranks_before(row[a], a, row[b], b);
        });
        std::sort(idx.begin(), idx.begin() + k);
      }
      std::copy(idx.begin(), idx.begin() + k, o + r * k);
    }
  });
}

void compact_(at::TensorList caches, torch::Tensor const& indices) {
  triattention::checks::compact(caches, indices, c10::DeviceType::CPU);
  const int64_t B = indices.size(0), H = indices.size(1), K = indices.size(2);
  int64_t min_c = INT64_MAX;
  for (const auto& c : caches) min_c = std::min(min_c, c.size(2));
  if (caches.empty() || indices.numel() == 0) return;
  const int64_t* idx = indices.data_ptr<int64_t>();
  for (int64_t r = 0; r < B * H; ++r) {
    for (int64_t j = 0; j < K; ++j) {
      const int64_t src = idx[r * K + j];
      TORCH_CHECK(src >= j && src < min_c, "compact_: indices[", r / H, ", ", r % H, ", ", j, "] = ", src,
                  " must be in [", j, ", ", min_c, ")");
    }
  }
  const int64_t L = static_cast<int64_t>(caches.size());
  at::parallel_for(0, L * B * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const auto& c = caches[item / (B * H)];
      const int64_t bh = item % (B * H), b = bh / H, h = bh % H;
      const int64_t es = c.element_size();
      const int64_t row_bytes = c.size(3) * es;
      char* base = static_cast<char*>(c.data_ptr()) + (b * c.stride(0) + h * c.stride(1)) * es;
      const int64_t sc = c.stride(2) * es;
      // Ascending j is safe in place: indices[j] >= j, so a source row is never one already written.
      for (int64_t j = 0; j < K; ++j) {
        const int64_t src = idx[bh * K + j];
        if (src != j) std::memmove(base + j * sc, base + src * sc, row_bytes);
      }
    }
  });
}
