// SPDX-License-Identifier: Apache-2.0
// score_keys (kernel_src/OPS.md, op 1) on CUDA/ROCm: the register fast path for the common shapes (optionally
// staged through shared memory); every other shape goes to the generic path of score_keys_generic.cu.
#include "common.cuh"

#include <algorithm>

namespace triattention {
namespace cuda {
namespace {

// ---------------------------------------------------------------------------------------------------------
// Fast path: D in {64, 128}, rotary_dim == D, O == 1, G <= 8, key rows 4-element aligned.
//
// The op reads each key once and writes G floats; it stays bandwidth-bound only if the instructions per key stay
// few. One group of L = D / 8 lanes scores a key: lane l holds 8 key elements in two 4-element chunks chosen so
// that both elements of its 4 rotary pairs f = 4l + i are in the lane (half pairing: dims 4l + i and D/2 + 4l + i;
// interleaved: dims 8l .. 8l + 7), so pair norms need no cross-lane traffic. The lane keeps the weights of its 8
// dims and 4 pairs for all query heads in registers (loaded once per block). A group scores U keys per step, the
// next step's loads in flight during this step's arithmetic. The V = Gp * U lane partial sums (Gp = G rounded up
// to a power of two, padded heads have zero weights), indexed j = h * U + u, are combined by a halving
// reduce-scatter over the L lanes (see reduce_scatter), which leaves each lane whole sums to store.

template <typename scalar_t>
struct Chunk4;  // 4 consecutive key elements, one vector load
template <>
struct Chunk4<float> {
  using type = uint4;
};
template <>
struct Chunk4<bf16_bits> {
  using type = uint2;
};
template <>
struct Chunk4<f16_bits> {
  using type = uint2;
};

__device__ __forceinline__ float half_bits_to_float(uint32_t bits) {
  return to_float(f16_bits{static_cast<uint16_t>(bits)});
}

template <typename scalar_t>
__device__ __forceinline__ void unpack4(const typename Chunk4<scalar_t>::type& raw, float* x) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    x[0] = __uint_as_float(raw.x);
    x[1] = __uint_as_float(raw.y);
    x[2] = __uint_as_float(raw.z);
    x[3] = __uint_as_float(raw.w);
  } else if constexpr (std::is_same_v<scalar_t, bf16_bits>) {  // bf16 = the upper half of an fp32
    x[0] = __uint_as_float(raw.x << 16);
    x[1] = __uint_as_float(raw.x & 0xffff0000u);
    x[2] = __uint_as_float(raw.y << 16);
    x[3] = __uint_as_float(raw.y & 0xffff0000u);
  } else {
    x[0] = half_bits_to_float(raw.x & 0xffffu);
    x[1] = half_bits_to_float(raw.x >> 16);
    x[2] = half_bits_to_float(raw.y & 0xffffu);
    x[3] = half_bits_to_float(raw.y >> 16);
  }
}

// Pair norm with the hardware square root: the IEEE sqrtf is ~7 instructions, a quarter of this kernel's
// per-key budget at HBM rate; sqrt.approx.f32 is one, within a few ulp (far inside the 1e-5 tolerance of
// the contract tests); it keeps sqrt(0) = 0, sqrt(inf) = inf and handles subnormals (no .ftz).
__device__ __forceinline__ float fast_pair_norm(float a, float b) {
#ifdef TRIATT_ROCM
  return tmath::pair_norm(a, b);
#else
  float r;
  asm("sqrt.approx.f32 %0, %1;" : "=f"(r) : "f"(a * a + b * b));
  return r;
#endif
}

constexpr int pow2_ceil(int x) { return x <= 1 ? 1 : 2 * pow2_ceil((x + 1) / 2); }
constexpr int log2_exact(int x) { return x <= 1 ? 0 : 1 + log2_exact(x / 2); }

// Halving reduce-scatter of v[0, C) over the L lanes of a group, xor masks M = L/2, .., 1. In each round a lane
// keeps one half of its values (its bit M picks which), adds the partner's copy of that half, and sends the other
// half; once one value is left the remaining rounds are plain butterfly adds. Round by round the lane bits pick
// the index bits of j = h * U + u from the top, so afterwards a lane holds the sums of
// j = X + i, i < max(V / L, 1), with X = lane * (V / L) when V >= L, else X = lane / (L / V).
// Rounds that split a head bit (C / 2 >= U) need no select: the weights were loaded into head slots permuted by
// the lane's head bits (slot s holds head s ^ (X / U)), so "the half I keep" is always the lower one.
template <int C, int M, int U, int V>
__device__ __forceinline__ void reduce_scatter(float (&v)[V], int lane) {
  if constexpr (M > 0) {
    if constexpr (C > 1) {
      const bool upper = (lane & M) != 0;
#pragma unroll
      for (int i = 0; i < C / 2; ++i) {
        if constexpr (C / 2 >= U) {
          v[i] += shfl_xor(v[i + C / 2], M, kLaneGroup);
        } else {
          const float send = upper ? v[i] : v[i + C / 2];
          const float keep = upper ? v[i + C / 2] : v[i];
          v[i] = keep + shfl_xor(send, M, kLaneGroup);
        }
      }
      reduce_scatter<C / 2, M / 2, U>(v, lane);
    } else {
      v[0] += shfl_xor(v[0], M, kLaneGroup);
      reduce_scatter<1, M / 2, U>(v, lane);
    }
  }
}

// kStaged: keys go through a ring of `stages` shared-memory steps by cp.async (dynamic shared memory: stages * U * 2 *
// kThreads chunks) instead of two register buffers; the arithmetic, and so every output bit, is the same. Why: at
// 124 registers (bf16, D 128, G 4) two blocks fit an SM and the register path keeps one step (64 bytes) per thread
// in flight, ~32 KB per SM, which by Little's law caps it near 3.5 TB/s (72 % measured at B 8). Staged, it is
// stages - 1 steps (and 100 registers). sm_80+ and CUDA only; elsewhere this instantiation is the register path.
template <typename scalar_t, int D, int G, bool kInterleaved, bool kStaged>
__global__ void __launch_bounds__(kThreads)
    score_keys_fast_kernel(float* __restrict__ out,             // [B, Hq, N]
                           const scalar_t* __restrict__ keys,   // [B, Hkv, N, D], 4-element aligned rows
                           const float* __restrict__ trig,      // [B, Hq, 1, D]
                           const float* __restrict__ norm_w,    // [B, Hq, D/2]
                           int64_t Hkv, int64_t N, int64_t ks_b, int64_t ks_h, int64_t ks_n, int stages) {
  constexpr int L = D / 8;                // lanes per key
  constexpr int U = G > 4 ? 2 : 4;        // keys per group and step
  constexpr int Gp = pow2_ceil(G);
  constexpr int V = Gp * U;               // partial sums per lane
  constexpr int S = V >= L ? V / L : 1;   // finished sums per lane after the reduce-scatter
  constexpr int kGroupsPerWarp = kLaneGroup / L;
  using raw_t = typename Chunk4<scalar_t>::type;
  static_assert(D == 64 || D == 128, "fast path D");

  const int lane = threadIdx.x % L;
  const int X = V >= L ? lane * S : lane / (L / (V < L ? V : L));
  const int64_t b = blockIdx.y / Hkv, g = blockIdx.y % Hkv, Hq = Hkv * G;
  const int c0 = kInterleaved ? 8 * lane : 4 * lane;
  const int c1 = kInterleaved ? 8 * lane + 4 : D / 2 + 4 * lane;

  float w[Gp][8], cw[Gp][4];
#pragma unroll
  for (int s = 0; s < Gp; ++s) {
    const int h = s ^ (X >> log2_exact(U));  // < Gp; heads G .. Gp-1 are padding with zero weights
    const bool real = h < G;
    const float* t = trig + (b * Hq + g * G + (real ? h : 0)) * D;
    const float* c = norm_w + (b * Hq + g * G + (real ? h : 0)) * (D / 2) + 4 * lane;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      w[s][j] = real ? t[c0 + j] : 0.0f;
      w[s][4 + j] = real ? t[c1 + j] : 0.0f;
      cw[s][j] = real ? c[j] : 0.0f;
    }
  }

  const scalar_t* kbase = keys + b * ks_b + g * ks_h;
  float* obase = out + (b * Hq + g * G) * N;
  const int64_t steps = (N + U - 1) / U;
  // The loop bounds are uniform over a warp (its groups advance together), so every lane reaches the shuffles.
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * (kThreads / kLaneGroup) + threadIdx.x / kLaneGroup) *
                        kGroupsPerWarp;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * (kThreads / kLaneGroup) * kGroupsPerWarp;
  const int group = (threadIdx.x % kLaneGroup) / L;

  auto load = [&](int64_t step, raw_t (&raw)[U][2]) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t n = (step + group) * U + u;
      if (n < N) {
        const scalar_t* row = kbase + n * ks_n;
        raw[u][0] = *reinterpret_cast<const raw_t*>(row + c0);
        raw[u][1] = *reinterpret_cast<const raw_t*>(row + c1);
      } else {
        raw[u][0] = raw[u][1] = raw_t{};
      }
    }
  };
  auto score = [&](int64_t step, const raw_t (&raw)[U][2]) {
    float v[V];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float x[8], nrm[4];
      unpack4<scalar_t>(raw[u][0], x);
      unpack4<scalar_t>(raw[u][1], x + 4);
#pragma unroll
      for (int i = 0; i < 4; ++i)
        nrm[i] = kInterleaved ? fast_pair_norm(x[2 * i], x[2 * i + 1]) : fast_pair_norm(x[i], x[4 + i]);
#pragma unroll
      for (int s = 0; s < Gp; ++s) {
        float acc = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j) acc = tmath::dot_acc(acc, x[j], w[s][j]);
#pragma unroll
        for (int i = 0; i < 4; ++i) acc = tmath::dot_acc(acc, nrm[i], cw[s][i]);
        v[s * U + u] = acc;
      }
    }
    reduce_scatter<V, L / 2, U>(v, lane);
#pragma unroll
    for (int i = 0; i < S; ++i) {
      const int j = X + i, h = j / U;
      const int64_t n = (step + group) * U + j % U;
      const bool writer = V >= L || lane % (L / (V < L ? V : L)) == 0;  // V < L: L / V lanes hold each sum
      if (writer && h < G && n < N) obase[h * N + n] = v[i];
    }
  };

  if constexpr (kStaged && kHaveCpAsync) {
    // Slot (s, c) of this thread: ring[(s * 2U + c) * kThreads + threadIdx.x], consecutive threads on consecutive
    // 8-byte words. Only the thread that copies a slot reads it, so cp.async.wait_group orders everything (no
    // barrier); a slot is refilled one iteration after it was read, and that read fed arithmetic already issued.
    extern __shared__ __align__(16) unsigned char smem_bytes[];
    raw_t* ring = reinterpret_cast<raw_t*>(smem_bytes) + threadIdx.x;
    auto issue = [&](int64_t step, int s) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t n = (step + group) * U + u;
        const bool valid = n < N;
        const scalar_t* row = kbase + (valid ? n : 0) * ks_n;
        cp_async(ring + (s * 2 * U + 2 * u) * kThreads, row + c0, valid);
        cp_async(ring + (s * 2 * U + 2 * u + 1) * kThreads, row + c1, valid);
      }
      cp_async_commit();  // one group per step, zero-filled past the end, so the wait count below stays exact
    };
    for (int s = 0; s + 1 < stages; ++s) issue(first + s * stride, s);
    int slot = 0;
    for (int64_t step = first; step < steps; step += stride) {
      issue(step + (stages - 1) * stride, slot == 0 ? stages - 1 : slot - 1);
      cp_async_wait_pending(stages - 1);  // this step's group has landed
      raw_t raw[U][2];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        raw[u][0] = ring[(slot * 2 * U + 2 * u) * kThreads];
        raw[u][1] = ring[(slot * 2 * U + 2 * u + 1) * kThreads];
      }
      score(step, raw);
      slot = slot + 1 == stages ? 0 : slot + 1;
    }
    cp_async_wait<0>();  // no copy into this block's shared memory outlives the block
  } else {
    raw_t even[U][2], odd[U][2];
    load(first, even);
    for (int64_t step = first; step < steps; step += 2 * stride) {
      load(step + stride, odd);
      score(step, even);
      if (step + stride >= steps) break;
      load(step + 2 * stride, even);
      score(step + stride, odd);
    }
  }
}

// Launch choices of the fast path (tuning.h), resolved once per call.
struct FastLaunch {
  int sms, waves, stages;  // stages 1: register path; 2..8: staged path (16-bit keys)
  int64_t max_smem;
};

template <typename Kernel, typename scalar_t>
cudaError_t launch_fast_kernel(Kernel kernel, const ScoreKeysArgs& a, const FastLaunch& f, int keys_per_block_step,
                               int64_t smem, cudaStream_t stream, const scalar_t* keys, int stages) {
  if (const cudaError_t err = allow_dynamic_smem(kernel, smem)) return err;
  // One wave of resident blocks (by default) spread over the (b, kv head) rows; each block then loops over its row,
  // so its weight loads are paid once for many keys and no second, partial wave is left at the end.
  int resident = 0;
  if (const cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, kThreads, smem))
    return err;
  const int64_t rows = a.B * a.Hkv;
  const int64_t per_row =
      std::max<int64_t>(1, static_cast<int64_t>(std::max(resident, 1)) * f.sms * f.waves / rows);
  const int64_t blocks = std::min<int64_t>((a.N + keys_per_block_step - 1) / keys_per_block_step, per_row);
  kernel<<<dim3(blocks, rows), kThreads, smem, stream>>>(a.out, keys, a.trig, a.norm_w, a.Hkv, a.N, a.ks_b, a.ks_h,
                                                         a.ks_n, stages);
  return launched();
}

template <typename scalar_t, int D, int G, bool kInterleaved>
cudaError_t launch_fast(const ScoreKeysArgs& a, const FastLaunch& f, cudaStream_t stream) {
  constexpr int U = G > 4 ? 2 : 4;
  constexpr int kKeysPerBlockStep = kThreads / (D / 8) * U;
  using raw_t = typename Chunk4<scalar_t>::type;
  const scalar_t* keys = static_cast<const scalar_t*>(a.keys);
  if constexpr (sizeof(scalar_t) == 2) {
    const int64_t per_stage = int64_t{2} * U * kThreads * static_cast<int64_t>(sizeof(raw_t));
    const int stages = static_cast<int>(std::min<int64_t>(f.stages, f.max_smem / per_stage));
    if (stages >= 2) {
      auto kernel = score_keys_fast_kernel<scalar_t, D, G, kInterleaved, true>;
      return launch_fast_kernel(kernel, a, f, kKeysPerBlockStep, stages * per_stage, stream, keys, stages);
    }
  }
  auto kernel = score_keys_fast_kernel<scalar_t, D, G, kInterleaved, false>;
  return launch_fast_kernel(kernel, a, f, kKeysPerBlockStep, 0, stream, keys, 0);
}

template <typename scalar_t, int D, bool kInterleaved>
cudaError_t launch_fast_g(const ScoreKeysArgs& a, const FastLaunch& f, cudaStream_t stream) {
  switch (a.G) {
    case 1: return launch_fast<scalar_t, D, 1, kInterleaved>(a, f, stream);
    case 2: return launch_fast<scalar_t, D, 2, kInterleaved>(a, f, stream);
    case 3: return launch_fast<scalar_t, D, 3, kInterleaved>(a, f, stream);
    case 4: return launch_fast<scalar_t, D, 4, kInterleaved>(a, f, stream);
    case 5: return launch_fast<scalar_t, D, 5, kInterleaved>(a, f, stream);
    case 6: return launch_fast<scalar_t, D, 6, kInterleaved>(a, f, stream);
    case 7: return launch_fast<scalar_t, D, 7, kInterleaved>(a, f, stream);
    case 8: return launch_fast<scalar_t, D, 8, kInterleaved>(a, f, stream);
    default: return cudaErrorInvalidValue;  // fast_path_applies admits G in [1, 8] only
  }
}

// The fast path's preconditions, all checked in bytes: 4-element vector loads need the base pointer and every
// key stride to be multiples of 4 elements.
bool fast_path_applies(const ScoreKeysArgs& a) {
  const int64_t es = a.key_type == KeyType::kFloat32 ? 4 : 2, vec = 4 * es;
  return (a.D == 64 || a.D == 128) && a.rotary_dim == a.D && a.O == 1 && a.G >= 1 && a.G <= 8 &&
         reinterpret_cast<uintptr_t>(a.keys) % vec == 0 && (a.ks_b * es) % vec == 0 && (a.ks_h * es) % vec == 0 &&
         (a.ks_n * es) % vec == 0;
}

}  // namespace

cudaError_t launch_score_keys(const ScoreKeysArgs& a, int sms, int64_t max_smem_optin, const Tuning& tuning,
                              cudaStream_t stream) {
  if (a.B * a.Hkv * a.G * a.N == 0) return cudaSuccess;
  if (fast_path_applies(a)) {
    const FastLaunch f{sms, or_builtin(tuning.score_waves, kBuiltinScoreWaves),
                       or_builtin(tuning.score_stages, kBuiltinScoreStages), max_smem_optin};
    return with_key_type(a.key_type, [&](auto tag) {
      using scalar_t = decltype(tag);
      if (a.D == 128)
        return a.interleaved ? launch_fast_g<scalar_t, 128, true>(a, f, stream)
                             : launch_fast_g<scalar_t, 128, false>(a, f, stream);
      return a.interleaved ? launch_fast_g<scalar_t, 64, true>(a, f, stream)
                           : launch_fast_g<scalar_t, 64, false>(a, f, stream);
    });
  }
  return launch_score_keys_generic(a, max_smem_optin, stream);
}

}  // namespace cuda
}  // namespace triattention
