// SPDX-License-Identifier: Apache-2.0
// CUDA (and, hipified, ROCm) implementations of the ops in kernel_src/OPS.md. Arithmetic lives in
// triattention_math.h, shared with the CPU build.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/all.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../triattention_math.h"

namespace tmath = triattention::math;

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
constexpr int kScoreTileKeys = 64;  // keys per score block, staged in shared memory as fp32

void check_cuda(const torch::Tensor& t, const char* name, const torch::Device& device) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.device() == device, name, " must be on ", device, ", got ", t.device());
}

void check_f32_contiguous(const torch::Tensor& t, const char* name, const torch::Device& device) {
  check_cuda(t, name, device);
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous, got strides ", t.strides());
}

// ---------------------------------------------------------------------------------------------------------
// score_keys. One block per (tile of kScoreTileKeys keys, b, kv head). Keys are read once with coalesced
// 16-byte loads (when aligned) and staged as fp32 rows x[j][0..D) in shared memory, followed by their R/2 pair
// norms x[j][D..D+R/2). The block's G*O augmented weight rows [W[h,o,:], c[h,:]] sit in shared memory too, so
// out[h][j] = max_o <x_j, w[h,o]>: the norm term does not depend on o.

template <typename scalar_t, bool kVec16>
__global__ void score_keys_kernel(float* __restrict__ out,             // [B, Hq, N]
                                  const scalar_t* __restrict__ keys,   // [B, Hkv, N, D], strided
                                  const float* __restrict__ trig,      // [B, Hq, O, D]
                                  const float* __restrict__ norm_w,    // [B, Hq, R/2]
                                  int64_t Hkv, int64_t N, int D, int G, int O, int half, bool interleaved,
                                  int64_t ks_b, int64_t ks_h, int64_t ks_n) {
  extern __shared__ float smem[];
  const int F = D + half;
  const int ld = F + 1;  // odd row pitch for even F: consecutive keys hit different banks
  float* w = smem;                        // [G*O][F]
  float* x = smem + G * O * F;            // [kScoreTileKeys][ld]
  const int64_t bg = blockIdx.y;          // b * Hkv + g
  const int64_t b = bg / Hkv, g = bg % Hkv;
  const int64_t Hq = Hkv * G;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kScoreTileKeys;
  const int nt = static_cast<int>(min64(kScoreTileKeys, N - n0));

  for (int i = threadIdx.x; i < G * O * F; i += blockDim.x) {
    const int r = i / F, f = i % F;
    const int64_t h = g * G + r / O, o = r % O;
    w[i] = f < D ? trig[((b * Hq + h) * O + o) * D + f] : norm_w[(b * Hq + h) * half + (f - D)];
  }
  const scalar_t* kbase = keys + b * ks_b + g * ks_h + n0 * ks_n;
  if (kVec16) {
    constexpr int kPer = 16 / sizeof(scalar_t);
    const int vpr = D / kPer;  // 16-byte vectors per key row
    for (int i = threadIdx.x; i < nt * vpr; i += blockDim.x) {
      const int j = i / vpr, v = i % vpr;
      const uint4 raw = *reinterpret_cast<const uint4*>(kbase + j * ks_n + v * kPer);
      const scalar_t* e = reinterpret_cast<const scalar_t*>(&raw);
#pragma unroll
      for (int u = 0; u < kPer; ++u) x[j * ld + v * kPer + u] = static_cast<float>(e[u]);
    }
  } else {
    for (int i = threadIdx.x; i < nt * D; i += blockDim.x) {
      const int j = i / D, d = i % D;
      x[j * ld + d] = static_cast<float>(kbase[j * ks_n + d]);
    }
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
  const int slices = blockDim.x / kScoreTileKeys;
  const int j = threadIdx.x % kScoreTileKeys;
  if (j >= nt) return;
  const float* xj = x + j * ld;
  for (int hh = threadIdx.x / kScoreTileKeys; hh < G; hh += slices) {
    float best = -INFINITY;
    for (int o = 0; o < O; ++o) {
      const float* wr = w + (hh * O + o) * F;
      float acc = 0.0f;
      for (int f = 0; f < F; ++f) acc = tmath::dot_acc(acc, xj[f], wr[f]);
      best = o == 0 ? acc : tmath::offset_max(best, acc);
    }
    out[(b * Hq + g * G + hh) * N + n0 + j] = best;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Block-wide reductions and scans through shared memory (portable to 64-wide ROCm wavefronts).

template <typename T>
__device__ T block_sum(T v, T* buf) {
  buf[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  const T total = buf[0];
  __syncthreads();
  return total;
}

// Exclusive prefix sum over the block (Hillis-Steele); also returns the block total.
__device__ int block_exclusive_scan(int v, int* buf, int* total) {
  buf[threadIdx.x] = v;
  __syncthreads();
  for (int s = 1; s < blockDim.x; s <<= 1) {
    const int add = threadIdx.x >= s ? buf[threadIdx.x - s] : 0;
    __syncthreads();
    buf[threadIdx.x] += add;
    __syncthreads();
  }
  const int inclusive = buf[threadIdx.x];
  *total = buf[blockDim.x - 1];
  __syncthreads();
  return inclusive - v;
}

// ---------------------------------------------------------------------------------------------------------
// zscore_group_reduce. One block per (b, kv head); the block owns out[b, g, :].

__global__ void zscore_group_reduce_kernel(float* __restrict__ out,               // [B, Hkv, N]
                                           const float* __restrict__ scores,      // [B, Hq, N]
                                           const bool* __restrict__ candidates,   // [B, N]
                                           int64_t Hkv, int64_t N, int G, bool use_max) {
  __shared__ double dbuf[kThreads];
  __shared__ long long cbuf[kThreads];
  const int64_t b = blockIdx.x / Hkv, g = blockIdx.x % Hkv;
  const bool* c = candidates + b * N;
  float* orow = out + blockIdx.x * N;
  long long cnt = 0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) cnt += c[n] ? 1 : 0;
  const long long count = block_sum(cnt, cbuf);
  if (count == 0) {
    for (int64_t n = threadIdx.x; n < N; n += blockDim.x) orow[n] = -INFINITY;
    return;
  }
  for (int hh = 0; hh < G; ++hh) {
    const float* srow = scores + (b * Hkv * G + g * G + hh) * N;
    double sum = 0.0;
    for (int64_t n = threadIdx.x; n < N; n += blockDim.x) sum += c[n] ? (double)srow[n] : 0.0;
    const float mean = tmath::zs_mean(block_sum(sum, dbuf), count);
    double sq = 0.0;
    for (int64_t n = threadIdx.x; n < N; n += blockDim.x) sq += c[n] ? tmath::sq_dev(srow[n], mean) : 0.0;
    const float sd = tmath::zs_std(block_sum(sq, dbuf), count);
    for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
      const float prev = hh == 0 ? tmath::group_init(use_max) : orow[n];  // each thread owns its n
      orow[n] = tmath::group_step(prev, tmath::zscore(srow[n], mean, sd), use_max);
    }
  }
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x)
    orow[n] = c[n] ? tmath::group_finish(orow[n], G, use_max) : -INFINITY;
}

// ---------------------------------------------------------------------------------------------------------
// select_topk. One block per row: a 4-pass 8-bit radix select finds the k-th largest order key T; then one
// ordered sweep keeps keys > T and the lowest-indexed (k - #greater) keys == T, writing them in index order.

__global__ void select_topk_kernel(int64_t* __restrict__ out,           // [R, k]
                                   const float* __restrict__ scores,    // [R, N]
                                   int64_t N, int64_t k) {
  __shared__ int hist[256];
  __shared__ int scan_buf[kThreads];
  __shared__ uint32_t sh_prefix;
  __shared__ int64_t sh_remaining;
  const float* row = scores + static_cast<int64_t>(blockIdx.x) * N;
  int64_t* orow = out + static_cast<int64_t>(blockIdx.x) * k;
  if (threadIdx.x == 0) {
    sh_prefix = 0;
    sh_remaining = k;
  }
  uint32_t mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    const uint32_t prefix = sh_prefix;
    for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
      const uint32_t key = tmath::order_key(row[n]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int64_t above = 0;
      for (int bin = 255; bin >= 0; --bin) {
        if (above + hist[bin] >= sh_remaining) {
          sh_prefix = prefix | (static_cast<uint32_t>(bin) << shift);
          sh_remaining -= above;
          break;
        }
        above += hist[bin];
      }
    }
    mask |= 255u << shift;
    __syncthreads();
  }
  const uint32_t thr = sh_prefix;
  const int64_t need_eq = sh_remaining;  // keys == thr to keep, lowest indices first
  int64_t eq_seen = 0, written = 0;
  for (int64_t base = 0; base < N; base += blockDim.x) {
    const int64_t n = base + threadIdx.x;
    const uint32_t key = n < N ? tmath::order_key(row[n]) : 0u;
    const bool is_eq = n < N && key == thr;
    int eq_total;
    const int eq_before = block_exclusive_scan(is_eq ? 1 : 0, scan_buf, &eq_total);
    const bool keep = n < N && (key > thr || (is_eq && eq_seen + eq_before < need_eq));
    int kept_total;
    const int pos = block_exclusive_scan(keep ? 1 : 0, scan_buf, &kept_total);
    if (keep) orow[written + pos] = n;
    eq_seen += eq_total;
    written += kept_total;
    if (written >= k) break;
  }
}

// ---------------------------------------------------------------------------------------------------------
// compact_. One block per (b, h, cache); j advances in tiles, each read whole into registers before any of it
// is written. Sources are never behind their destination (indices[j] >= j), so a tile never reads a row an
// earlier tile wrote, and a later tile's sources lie beyond every row this tile writes.

constexpr int kMaxCachesPerLaunch = 32;
constexpr int kUnitsPerThread = 4;

struct CompactCache {
  char* base;
  int64_t stride_b, stride_h, stride_c;  // bytes
  int64_t capacity;                      // C
  int64_t row_bytes;
  int vec_bytes;                         // 16, 8, 4, 2 or 1: alignment of base, strides and row
};

struct CompactBatch {
  CompactCache caches[kMaxCachesPerLaunch];
};

template <typename vec_t>
__device__ void compact_rows(const CompactCache& c, const int64_t* __restrict__ idx, int64_t b, int64_t h,
                             int64_t K) {
  const int64_t units_per_row = c.row_bytes / static_cast<int64_t>(sizeof(vec_t));
  const int64_t tile_units = static_cast<int64_t>(blockDim.x) * kUnitsPerThread;
  const int64_t tile_rows = max64(1, tile_units / units_per_row);
  char* base = c.base + b * c.stride_b + h * c.stride_h;
  for (int64_t j0 = 0; j0 < K; j0 += tile_rows) {
    const int64_t rows = min64(tile_rows, K - j0);
    const int64_t units = rows * units_per_row;
    // Rows wider than one tile are copied in several passes of the same row set; still read-all-then-write.
    for (int64_t u0 = 0; u0 < units; u0 += tile_units) {
      vec_t buf[kUnitsPerThread];
      int64_t dst_off[kUnitsPerThread];
#pragma unroll
      for (int i = 0; i < kUnitsPerThread; ++i) {
        dst_off[i] = -1;
        const int64_t u = u0 + threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
        if (u >= units || u >= u0 + tile_units) continue;
        const int64_t j = j0 + u / units_per_row, col = u % units_per_row;
        const int64_t src = idx[j];
        if (src == j || src < j || src >= c.capacity) continue;  // identity, or outside the contract
        buf[i] = *reinterpret_cast<const vec_t*>(base + src * c.stride_c + col * sizeof(vec_t));
        dst_off[i] = j * c.stride_c + col * sizeof(vec_t);
      }
      __syncthreads();
#pragma unroll
      for (int i = 0; i < kUnitsPerThread; ++i)
        if (dst_off[i] >= 0) *reinterpret_cast<vec_t*>(base + dst_off[i]) = buf[i];
      __syncthreads();
    }
  }
}

__global__ void compact_kernel(CompactBatch batch, const int64_t* __restrict__ indices,  // [B, H, K]
                               int64_t H, int64_t K) {
  const CompactCache& c = batch.caches[blockIdx.y];
  const int64_t b = blockIdx.x / H, h = blockIdx.x % H;
  const int64_t* idx = indices + static_cast<int64_t>(blockIdx.x) * K;
  switch (c.vec_bytes) {
    case 16: compact_rows<uint4>(c, idx, b, h, K); break;
    case 8: compact_rows<uint2>(c, idx, b, h, K); break;
    case 4: compact_rows<uint32_t>(c, idx, b, h, K); break;
    case 2: compact_rows<uint16_t>(c, idx, b, h, K); break;
    default: compact_rows<uint8_t>(c, idx, b, h, K); break;
  }
}

int vec_bytes_for(std::initializer_list<int64_t> values) {
  int v = 16;
  for (int64_t x : values)
    while (v > 1 && x % v != 0) v >>= 1;
  return v;
}

}  // namespace

void score_keys(torch::Tensor& out, torch::Tensor const& keys, torch::Tensor const& trig_weights,
                torch::Tensor const& norm_weights, int64_t rotary_dim, bool interleaved) {
  TORCH_CHECK(keys.is_cuda(), "keys must be a CUDA tensor, got device ", keys.device());
  const auto device = keys.device();
  TORCH_CHECK(keys.dim() == 4, "keys must be [B, Hkv, N, D], got shape ", keys.sizes());
  const auto kdt = keys.scalar_type();
  TORCH_CHECK(kdt == at::kFloat || kdt == at::kHalf || kdt == at::kBFloat16,
              "keys must be float16, bfloat16 or float32, got ", kdt);
  TORCH_CHECK(keys.size(3) <= 1 || keys.stride(3) == 1, "keys must have last-dim stride 1, got strides ",
              keys.strides());
  const int64_t B = keys.size(0), Hkv = keys.size(1), N = keys.size(2), D = keys.size(3);
  check_f32_contiguous(trig_weights, "trig_weights", device);
  TORCH_CHECK(trig_weights.dim() == 4 && trig_weights.size(0) == B && trig_weights.size(3) == D &&
                  trig_weights.size(2) >= 1,
              "trig_weights must be [B=", B, ", Hq, O>=1, D=", D, "], got shape ", trig_weights.sizes());
  const int64_t Hq = trig_weights.size(1), O = trig_weights.size(2);
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, "Hq (", Hq, ") must be a multiple of Hkv (", Hkv, ")");
  TORCH_CHECK(rotary_dim > 0 && rotary_dim % 2 == 0 && rotary_dim <= D,
              "rotary_dim must be even and in (0, D=", D, "], got ", rotary_dim);
  check_f32_contiguous(norm_weights, "norm_weights", device);
  TORCH_CHECK(norm_weights.dim() == 3 && norm_weights.size(0) == B && norm_weights.size(1) == Hq &&
                  norm_weights.size(2) == rotary_dim / 2,
              "norm_weights must be [B=", B, ", Hq=", Hq, ", R/2=", rotary_dim / 2, "], got shape ",
              norm_weights.sizes());
  check_f32_contiguous(out, "out", device);
  TORCH_CHECK(out.dim() == 3 && out.size(0) == B && out.size(1) == Hq && out.size(2) == N,
              "out must be [B=", B, ", Hq=", Hq, ", N=", N, "], got shape ", out.sizes());
  if (out.numel() == 0) return;
  const int64_t G = Hq / Hkv, half = rotary_dim / 2, F = D + half;
  const size_t smem = sizeof(float) * (G * O * F + kScoreTileKeys * (F + 1));
  const c10::cuda::OptionalCUDAGuard device_guard(device);
  int max_smem = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device.index()));
  TORCH_CHECK(smem <= static_cast<size_t>(max_smem), "score_keys needs ", smem,
              " bytes of shared memory (G*O=", G * O, ", D=", D, "), device allows ", max_smem);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index());
  const dim3 grid((N + kScoreTileKeys - 1) / kScoreTileKeys, B * Hkv);
  const int64_t es = keys.element_size();
  const bool vec16 = (D * es) % 16 == 0 && reinterpret_cast<uintptr_t>(keys.data_ptr()) % 16 == 0 &&
                     (keys.stride(0) * es) % 16 == 0 && (keys.stride(1) * es) % 16 == 0 &&
                     (keys.stride(2) * es) % 16 == 0;
  auto launch = [&](auto tag) {
    using scalar_t = decltype(tag);
    auto kernel = vec16 ? score_keys_kernel<scalar_t, true> : score_keys_kernel<scalar_t, false>;
    if (smem > 48 * 1024)
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    kernel<<<grid, kThreads, smem, stream>>>(out.data_ptr<float>(), keys.data_ptr<scalar_t>(),
                                             trig_weights.data_ptr<float>(), norm_weights.data_ptr<float>(), Hkv,
                                             N, (int)D, (int)G, (int)O, (int)half, interleaved, keys.stride(0),
                                             keys.stride(1), keys.stride(2));
  };
  if (kdt == at::kFloat) {
    launch(float{});
  } else if (kdt == at::kBFloat16) {
    launch(at::BFloat16{});
  } else {
    launch(at::Half{});
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void zscore_group_reduce(torch::Tensor& out, torch::Tensor const& scores, torch::Tensor const& candidates,
                         int64_t group_size, bool use_max) {
  TORCH_CHECK(scores.is_cuda(), "scores must be a CUDA tensor, got device ", scores.device());
  const auto device = scores.device();
  check_f32_contiguous(scores, "scores", device);
  TORCH_CHECK(scores.dim() == 3, "scores must be [B, Hq, N], got shape ", scores.sizes());
  const int64_t B = scores.size(0), Hq = scores.size(1), N = scores.size(2);
  TORCH_CHECK(group_size >= 1 && Hq % group_size == 0, "group_size must divide Hq (", Hq, "), got ",
              group_size);
  const int64_t Hkv = Hq / group_size;
  check_cuda(candidates, "candidates", device);
  TORCH_CHECK(candidates.scalar_type() == at::kBool, "candidates must be bool, got ", candidates.scalar_type());
  TORCH_CHECK(candidates.is_contiguous(), "candidates must be contiguous, got strides ", candidates.strides());
  TORCH_CHECK(candidates.dim() == 2 && candidates.size(0) == B && candidates.size(1) == N,
              "candidates must be [B=", B, ", N=", N, "], got shape ", candidates.sizes());
  check_f32_contiguous(out, "out", device);
  TORCH_CHECK(out.dim() == 3 && out.size(0) == B && out.size(1) == Hkv && out.size(2) == N,
              "out must be [B=", B, ", Hkv=", Hkv, ", N=", N, "], got shape ", out.sizes());
  if (out.numel() == 0) return;
  const c10::cuda::OptionalCUDAGuard device_guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index());
  zscore_group_reduce_kernel<<<B * Hkv, kThreads, 0, stream>>>(out.data_ptr<float>(), scores.data_ptr<float>(),
                                                              candidates.data_ptr<bool>(), Hkv, N,
                                                              (int)group_size, use_max);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void select_topk(torch::Tensor& out, torch::Tensor const& scores, int64_t k) {
  TORCH_CHECK(scores.is_cuda(), "scores must be a CUDA tensor, got device ", scores.device());
  const auto device = scores.device();
  check_f32_contiguous(scores, "scores", device);
  TORCH_CHECK(scores.dim() == 2, "scores must be [R, N], got shape ", scores.sizes());
  const int64_t R = scores.size(0), N = scores.size(1);
  TORCH_CHECK(k >= 0 && k <= N, "k must be in [0, N=", N, "], got ", k);
  check_cuda(out, "out", device);
  TORCH_CHECK(out.scalar_type() == at::kLong, "out must be int64, got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), "out must be contiguous, got strides ", out.strides());
  TORCH_CHECK(out.dim() == 2 && out.size(0) == R && out.size(1) == k, "out must be [R=", R, ", k=", k,
              "], got shape ", out.sizes());
  if (out.numel() == 0) return;
  const c10::cuda::OptionalCUDAGuard device_guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index());
  select_topk_kernel<<<R, kThreads, 0, stream>>>(out.data_ptr<int64_t>(), scores.data_ptr<float>(), N, k);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void compact_(at::TensorList caches, torch::Tensor const& indices) {
  TORCH_CHECK(indices.is_cuda(), "indices must be a CUDA tensor, got device ", indices.device());
  const auto device = indices.device();
  TORCH_CHECK(indices.scalar_type() == at::kLong, "indices must be int64, got ", indices.scalar_type());
  TORCH_CHECK(indices.is_contiguous(), "indices must be contiguous, got strides ", indices.strides());
  TORCH_CHECK(indices.dim() == 3, "indices must be [B, H, K], got shape ", indices.sizes());
  const int64_t B = indices.size(0), H = indices.size(1), K = indices.size(2);
  std::vector<CompactCache> entries;
  for (size_t i = 0; i < caches.size(); ++i) {
    const auto& c = caches[i];
    check_cuda(c, "caches[i]", device);
    TORCH_CHECK(c.dim() == 4 && c.size(0) == B && c.size(1) == H && c.size(2) >= K, "caches[", i,
                "] must be [B=", B, ", H=", H, ", C>=", K, ", D], got shape ", c.sizes());
    TORCH_CHECK(c.is_floating_point(), "caches[", i, "] must be a float tensor, got ", c.scalar_type());
    TORCH_CHECK(c.size(3) <= 1 || c.stride(3) == 1, "caches[", i, "] must have last-dim stride 1, got strides ",
                c.strides());
    const int64_t es = c.element_size();
    CompactCache e{static_cast<char*>(c.data_ptr()), c.stride(0) * es, c.stride(1) * es, c.stride(2) * es,
                   c.size(2), c.size(3) * es, 1};
    e.vec_bytes = vec_bytes_for({static_cast<int64_t>(reinterpret_cast<uintptr_t>(e.base)), e.stride_b,
                                 e.stride_h, e.stride_c, e.row_bytes});
    if (e.row_bytes > 0) entries.push_back(e);
  }
  if (entries.empty() || indices.numel() == 0) return;
  const c10::cuda::OptionalCUDAGuard device_guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index());
  for (size_t first = 0; first < entries.size(); first += kMaxCachesPerLaunch) {
    const size_t n = std::min<size_t>(kMaxCachesPerLaunch, entries.size() - first);
    CompactBatch batch{};
    std::copy(entries.begin() + first, entries.begin() + first + n, batch.caches);
    compact_kernel<<<dim3(B * H, n), kThreads, 0, stream>>>(batch, indices.data_ptr<int64_t>(), H, K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}
