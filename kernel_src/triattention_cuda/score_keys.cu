// SPDX-License-Identifier: Apache-2.0
// score_keys (kernel_src/OPS.md, op 1) on CUDA/ROCm: a register fast path for the common shapes, and a generic
// shared-memory path for everything else.
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

template <typename scalar_t, int D, int G, bool kInterleaved>
__global__ void __launch_bounds__(kThreads)
    score_keys_fast_kernel(float* __restrict__ out,             // [B, Hq, N]
                           const scalar_t* __restrict__ keys,   // [B, Hkv, N, D], 4-element aligned rows
                           const float* __restrict__ trig,      // [B, Hq, 1, D]
                           const float* __restrict__ norm_w,    // [B, Hq, D/2]
                           int64_t Hkv, int64_t N, int64_t ks_b, int64_t ks_h, int64_t ks_n) {
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

// ---------------------------------------------------------------------------------------------------------
// Generic path (any D, O, rotary_dim, pairing, alignment). One block per (tile of kTileKeys keys, b, kv head).
// Keys are read once and staged as fp32 rows x[j][0..D) in shared memory, followed by their R/2 pair norms
// x[j][D..D+R/2). The block's Gs*O augmented weight rows [W[h,o,:], c[h,:]] sit in shared memory too, so
// out[h][j] = max_o <x_j, w[h,o]>: the norm term does not depend on o. A launch scores the query heads
// h0 .. h0+Gs-1 of every kv head; the host splits G into several launches when G*O rows overflow shared memory.

constexpr int kTileKeys = static_cast<int>(kScoreTileKeys);

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    score_keys_generic_kernel(float* __restrict__ out,            // [B, Hq, N]
                              const scalar_t* __restrict__ keys,  // [B, Hkv, N, D], strided
                              const float* __restrict__ trig,     // [B, Hq, O, D]
                              const float* __restrict__ norm_w,   // [B, Hq, R/2]
                              int64_t Hkv, int64_t N, int D, int G, int h0, int Gs, int O, int half,
                              bool interleaved, int64_t ks_b, int64_t ks_h, int64_t ks_n) {
  extern __shared__ float smem[];
  const int F = D + half;
  const int ld = F + 1;  // odd row pitch for even F: consecutive keys hit different banks
  float* w = smem;               // [Gs*O][F]
  float* x = smem + Gs * O * F;  // [kTileKeys][ld]
  const int64_t b = blockIdx.y / Hkv, g = blockIdx.y % Hkv, Hq = Hkv * G;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTileKeys;
  const int nt = static_cast<int>(min64(kTileKeys, N - n0));

  for (int i = threadIdx.x; i < Gs * O * F; i += blockDim.x) {
    const int r = i / F, f = i % F;
    const int64_t h = g * G + h0 + r / O, o = r % O;
    w[i] = f < D ? trig[((b * Hq + h) * O + o) * D + f] : norm_w[(b * Hq + h) * half + (f - D)];
  }
  const scalar_t* kbase = keys + b * ks_b + g * ks_h + n0 * ks_n;
  for (int i = threadIdx.x; i < nt * D; i += blockDim.x) {
    const int j = i / D, d = i % D;
    x[j * ld + d] = to_float(kbase[j * ks_n + d]);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < nt * half; i += blockDim.x) {
    const int j = i / half, f = i % half;
    const float* xj = x + j * ld;
    x[j * ld + D + f] =
        tmath::pair_norm(xj[tmath::pair_first(f, half, interleaved)], xj[tmath::pair_second(f, half, interleaved)]);
  }
  __syncthreads();
  // Thread -> (key j, slice of q heads); keys vary fastest so a warp reads distinct banks and broadcasts w.
  const int slices = blockDim.x / kTileKeys;
  const int j = threadIdx.x % kTileKeys;
  if (j >= nt) return;
  const float* xj = x + j * ld;
  for (int hh = threadIdx.x / kTileKeys; hh < Gs; hh += slices) {
    float best = -INFINITY;
    for (int o = 0; o < O; ++o) {
      const float* wr = w + (hh * O + o) * F;
      float acc = 0.0f;
      for (int f = 0; f < F; ++f) acc = tmath::dot_acc(acc, xj[f], wr[f]);
      best = o == 0 ? acc : tmath::offset_max(best, acc);
    }
    out[(b * Hq + g * G + h0 + hh) * N + n0 + j] = best;
  }
}

template <typename scalar_t, int D, int G, bool kInterleaved>
cudaError_t launch_fast(const ScoreKeysArgs& a, int sms, int waves, cudaStream_t stream) {
  constexpr int U = G > 4 ? 2 : 4;
  constexpr int kKeysPerBlockStep = kThreads / (D / 8) * U;
  auto kernel = score_keys_fast_kernel<scalar_t, D, G, kInterleaved>;
  // One wave of resident blocks (by default) spread over the (b, kv head) rows; each block then loops over its row,
  // so its weight loads are paid once for many keys and no second, partial wave is left at the end.
  int resident = 0;
  if (const cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, kThreads, 0))
    return err;
  const int64_t rows = a.B * a.Hkv;
  const int64_t per_row = std::max<int64_t>(1, static_cast<int64_t>(std::max(resident, 1)) * sms * waves / rows);
  const int64_t blocks = std::min<int64_t>((a.N + kKeysPerBlockStep - 1) / kKeysPerBlockStep, per_row);
  kernel<<<dim3(blocks, rows), kThreads, 0, stream>>>(a.out, static_cast<const scalar_t*>(a.keys), a.trig,
                                                       a.norm_w, a.Hkv, a.N, a.ks_b, a.ks_h, a.ks_n);
  return launched();
}

template <typename scalar_t, int D, bool kInterleaved>
cudaError_t launch_fast_g(const ScoreKeysArgs& a, int sms, int waves, cudaStream_t stream) {
  switch (a.G) {
    case 1: return launch_fast<scalar_t, D, 1, kInterleaved>(a, sms, waves, stream);
    case 2: return launch_fast<scalar_t, D, 2, kInterleaved>(a, sms, waves, stream);
    case 3: return launch_fast<scalar_t, D, 3, kInterleaved>(a, sms, waves, stream);
    case 4: return launch_fast<scalar_t, D, 4, kInterleaved>(a, sms, waves, stream);
    case 5: return launch_fast<scalar_t, D, 5, kInterleaved>(a, sms, waves, stream);
    case 6: return launch_fast<scalar_t, D, 6, kInterleaved>(a, sms, waves, stream);
    case 7: return launch_fast<scalar_t, D, 7, kInterleaved>(a, sms, waves, stream);
    case 8: return launch_fast<scalar_t, D, 8, kInterleaved>(a, sms, waves, stream);
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

template <typename scalar_t>
cudaError_t launch_generic(const ScoreKeysArgs& a, int64_t max_smem_optin, cudaStream_t stream) {
  const int64_t half = a.rotary_dim / 2;
  const int64_t key_bytes = score_keys_tile_bytes(a.D, a.rotary_dim);
  const int64_t head_bytes = score_keys_head_bytes(a.D, a.O, a.rotary_dim);
  // Query heads per launch: as many as fit, spread evenly over the fewest launches (keys are re-read per launch).
  // The host entry has checked that one head fits.
  const int64_t fit = std::max<int64_t>(1, std::min<int64_t>(a.G, (max_smem_optin - key_bytes) / head_bytes));
  const int64_t launches = (a.G + fit - 1) / fit, per_launch = (a.G + launches - 1) / launches;
  const int64_t smem = key_bytes + per_launch * head_bytes;
  const dim3 grid((a.N + kTileKeys - 1) / kTileKeys, a.B * a.Hkv);
  auto kernel = score_keys_generic_kernel<scalar_t>;
  if (smem > 48 * 1024) {
    if (const cudaError_t err =
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)))
      return err;
  }
  for (int64_t h0 = 0; h0 < a.G; h0 += per_launch) {
    const int64_t gs = std::min<int64_t>(per_launch, a.G - h0);
    kernel<<<grid, kThreads, key_bytes + gs * head_bytes, stream>>>(
        a.out, static_cast<const scalar_t*>(a.keys), a.trig, a.norm_w, a.Hkv, a.N, (int)a.D, (int)a.G, (int)h0,
        (int)gs, (int)a.O, (int)half, a.interleaved, a.ks_b, a.ks_h, a.ks_n);
    if (const cudaError_t err = launched()) return err;
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t launch_score_keys(const ScoreKeysArgs& a, int sms, int64_t max_smem_optin, const Tuning& tuning,
                              cudaStream_t stream) {
  if (a.B * a.Hkv * a.G * a.N == 0) return cudaSuccess;
  if (fast_path_applies(a)) {
    const int waves = tuning.score_waves > 0 ? tuning.score_waves : 1;
    return with_key_type(a.key_type, [&](auto tag) {
      using scalar_t = decltype(tag);
      if (a.D == 128)
        return a.interleaved ? launch_fast_g<scalar_t, 128, true>(a, sms, waves, stream)
                             : launch_fast_g<scalar_t, 128, false>(a, sms, waves, stream);
      return a.interleaved ? launch_fast_g<scalar_t, 64, true>(a, sms, waves, stream)
                           : launch_fast_g<scalar_t, 64, false>(a, sms, waves, stream);
    });
  }
  return with_key_type(a.key_type, [&](auto tag) {
    return launch_generic<decltype(tag)>(a, max_smem_optin, stream);
  });
}

}  // namespace cuda
}  // namespace triattention
