// SPDX-License-Identifier: Apache-2.0
// score_keys (kernel_src/OPS.md, op 1) on CUDA/ROCm, the generic shared-memory path: every shape the fast path of
// score_keys.cu does not take.
#include "common.cuh"

#include <algorithm>

namespace triattention {
namespace cuda {
namespace {

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
  if (const cudaError_t err = allow_dynamic_smem(kernel, smem)) return err;
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

cudaError_t launch_score_keys_generic(const ScoreKeysArgs& a, int64_t max_smem_optin, cudaStream_t stream) {
  return with_key_type(a.key_type, [&](auto tag) { return launch_generic<decltype(tag)>(a, max_smem_optin, stream); });
}

}  // namespace cuda
}  // namespace triattention
