// SPDX-License-Identifier: Apache-2.0
// zscore_group_reduce and select_topk (kernel_src/OPS.md, ops 2 and 3) on CUDA/ROCm. Both split every row into
// chunks of kChunk scores, one block per (chunk, row), so a handful of rows still fills the GPU; the passes that
// need a whole row's statistic are separate launches, combining per-chunk partials in a fixed order.
#include "common.cuh"

namespace triattention {
namespace cuda {
namespace {

constexpr int kPerThread = 8;
constexpr int kChunk = kThreads * kPerThread;  // scores per block
constexpr int kGroups = kThreads / kLaneGroup;

// Total of one row's per-chunk partials, computed by one 32-lane group. The order is fixed, so every block that
// needs the total (the mean is recomputed in two passes) gets the same bits.
template <typename T>
__device__ T row_total(const T* __restrict__ parts, int64_t chunks) {
  T t = 0;
  for (int64_t c = threadIdx.x % kLaneGroup; c < chunks; c += kLaneGroup) t += parts[c];
  return group_sum(t);
}

// ---------------------------------------------------------------------------------------------------------
// zscore_group_reduce: (1) per (chunk, b, q head) the candidates' score sum, and per (chunk, b) their count;
// (2) per (chunk, b, q head) the squared deviations from the row mean; (3) per (chunk, b, kv head) the z-scores of
// its G query heads, reduced. Moments accumulate in double like the CPU kernel, with the same helpers.

__global__ void __launch_bounds__(kThreads)
    zscore_sum_kernel(double* __restrict__ part_sum,     // [B * Hq, chunks]
                      int64_t* __restrict__ part_count,  // [B, chunks]
                      const float* __restrict__ scores,  // [B, Hq, N]
                      const bool* __restrict__ cand,     // [B, N]
                      int64_t Hq, int64_t N) {
  __shared__ double dbuf[kGroups];
  __shared__ int64_t cbuf[kGroups];
  const int64_t row = blockIdx.y, b = row / Hq, chunks = gridDim.x;
  const float* s = scores + row * N;
  const bool* c = cand + b * N;
  double sum = 0.0;
  int64_t count = 0;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int64_t n = static_cast<int64_t>(blockIdx.x) * kChunk + i * kThreads + threadIdx.x;
    const float v = n < N ? s[n] : 0.0f;
    if (n < N && c[n]) {
      sum += (double)v;
      ++count;
    }
  }
  sum = block_sum(sum, dbuf);
  if (row % Hq == 0) count = block_sum(count, cbuf);  // one q head per batch row counts its candidates
  if (threadIdx.x == 0) {
    part_sum[row * chunks + blockIdx.x] = sum;
    if (row % Hq == 0) part_count[b * chunks + blockIdx.x] = count;
  }
}

__global__ void __launch_bounds__(kThreads)
    zscore_sqdev_kernel(double* __restrict__ part_sq,            // [B * Hq, chunks]
                        const double* __restrict__ part_sum,     // [B * Hq, chunks]
                        const int64_t* __restrict__ part_count,  // [B, chunks]
                        const float* __restrict__ scores,        // [B, Hq, N]
                        const bool* __restrict__ cand,           // [B, N]
                        int64_t Hq, int64_t N) {
  __shared__ double dbuf[kGroups];
  __shared__ float sh_mean;
  __shared__ int64_t sh_count;
  const int64_t row = blockIdx.y, b = row / Hq, chunks = gridDim.x;
  if (threadIdx.x < kLaneGroup) {
    const int64_t count = row_total(part_count + b * chunks, chunks);
    const double sum = row_total(part_sum + row * chunks, chunks);
    if (threadIdx.x == 0) {
      sh_count = count;
      sh_mean = count > 0 ? tmath::zs_mean(sum, count) : 0.0f;
    }
  }
  __syncthreads();
  const float mean = sh_mean;
  const float* s = scores + row * N;
  const bool* c = cand + b * N;
  double sq = 0.0;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int64_t n = static_cast<int64_t>(blockIdx.x) * kChunk + i * kThreads + threadIdx.x;
    const float v = n < N ? s[n] : 0.0f;
    if (n < N && c[n]) sq += tmath::sq_dev(v, mean);
  }
  sq = block_sum(sq, dbuf);
  if (threadIdx.x == 0) part_sq[row * chunks + blockIdx.x] = sh_count > 0 ? sq : 0.0;
}

__global__ void __launch_bounds__(kThreads)
    zscore_reduce_kernel(float* __restrict__ out,                 // [B, Hkv, N]
                         const double* __restrict__ part_sum,     // [B * Hq, chunks]
                         const double* __restrict__ part_sq,      // [B * Hq, chunks]
                         const int64_t* __restrict__ part_count,  // [B, chunks]
                         const float* __restrict__ scores,        // [B, Hq, N]
                         const bool* __restrict__ cand,           // [B, N]
                         int64_t Hkv, int64_t N, int G, bool use_max) {
  extern __shared__ float stats[];  // [G][2]: mean, std of each q head of this kv head
  __shared__ int64_t sh_count;
  const int64_t bg = blockIdx.y, b = bg / Hkv, chunks = gridDim.x;
  const int64_t row0 = bg * G;  // = b * Hq + g * G, the first q head of kv head g
  for (int hh = threadIdx.x / kLaneGroup; hh < G; hh += kGroups) {
    const int64_t count = row_total(part_count + b * chunks, chunks);
    const double sum = row_total(part_sum + (row0 + hh) * chunks, chunks);
    const double sq = row_total(part_sq + (row0 + hh) * chunks, chunks);
    if (threadIdx.x % kLaneGroup == 0) {
      stats[2 * hh] = count > 0 ? tmath::zs_mean(sum, count) : 0.0f;
      stats[2 * hh + 1] = count > 0 ? tmath::zs_std(sq, count) : 1.0f;
      if (hh == 0) sh_count = count;
    }
  }
  __syncthreads();
  const bool none = sh_count == 0;  // no candidates in batch row b: every output is -inf
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kChunk + threadIdx.x;
  float acc[kPerThread];
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) acc[i] = tmath::group_init(use_max);
  for (int hh = 0; hh < G && !none; ++hh) {
    const float mean = stats[2 * hh], sd = stats[2 * hh + 1];
    const float* s = scores + (row0 + hh) * N;
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int64_t n = n0 + i * kThreads;
      if (n < N) acc[i] = tmath::group_step(acc[i], tmath::zscore(s[n], mean, sd), use_max);
    }
  }
  const bool* c = cand + b * N;
  float* o = out + bg * N;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int64_t n = n0 + i * kThreads;
    if (n < N) o[n] = !none && c[n] ? tmath::group_finish(acc[i], G, use_max) : -INFINITY;
  }
}

// ---------------------------------------------------------------------------------------------------------
// select_topk: a radix select over the order keys (tmath::order_key: larger score -> larger key), 8 bits per
// pass from the top, finds T = the k-th largest key and need = how many keys == T to keep (k minus the keys > T).
// Each pass histograms the keys that match the prefix found so far, per chunk in shared memory, then into the
// row's global histogram; the last block of the row to finish (atomic ticket) picks the bin. Then a count pass
// and a write pass: kept = keys > T plus the `need` lowest-indexed keys == T, written in index order.

constexpr int kPasses = 4;

struct TopkState {
  uint32_t prefix;    // bits of T found so far
  int32_t remaining;  // keys still to take among those matching prefix
};

__global__ void __launch_bounds__(kThreads)
    topk_radix_kernel(int* __restrict__ hist,              // [R, 256] this pass, zeroed
                      int* __restrict__ ticket,            // [R] this pass, zeroed
                      TopkState* __restrict__ state,       // [kPasses, R]
                      const float* __restrict__ scores,    // [R, N]
                      int64_t N, int64_t k, int pass) {
  static_assert(kThreads == 256, "one thread per bin");
  __shared__ int local[256];
  __shared__ int scan_buf[kGroups];
  __shared__ bool last;
  const int64_t row = blockIdx.y, R = gridDim.y;
  const TopkState in = pass == 0 ? TopkState{0u, static_cast<int32_t>(k)} : state[(pass - 1) * R + row];
  const int shift = 24 - 8 * pass;
  const uint32_t mask = pass == 0 ? 0u : 0xffffffffu << (32 - 8 * pass);
  local[threadIdx.x] = 0;
  __syncthreads();
  const float* s = scores + row * N;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int64_t n = static_cast<int64_t>(blockIdx.x) * kChunk + i * kThreads + threadIdx.x;
    if (n < N) {
      const uint32_t key = tmath::order_key(s[n]);
      if ((key & mask) == in.prefix) atomicAdd(&local[(key >> shift) & 255u], 1);
    }
  }
  __syncthreads();
  if (local[threadIdx.x] != 0) atomicAdd(&hist[row * 256 + threadIdx.x], local[threadIdx.x]);
  // Publish this block's counts before taking a ticket (the threadFenceReduction pattern).
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&ticket[row], 1) == static_cast<int>(gridDim.x) - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  // Thread t takes bin 255 - t, so a prefix sum in thread order counts the keys in bins at or above it.
  const int bin = 255 - threadIdx.x;
  const int count = atomicAdd(&hist[row * 256 + bin], 0);  // coherent read of every block's additions
  const int above = block_exclusive_scan(count, scan_buf);
  if (above < in.remaining && above + count >= in.remaining)
    state[pass * R + row] = TopkState{in.prefix | (static_cast<uint32_t>(bin) << shift), in.remaining - above};
}

__global__ void __launch_bounds__(kThreads)
    topk_count_kernel(int2* __restrict__ chunk_counts,       // [R, chunks]: (#keys > T, #keys == T)
                      const TopkState* __restrict__ result,   // [R]
                      const float* __restrict__ scores,      // [R, N]
                      int64_t N) {
  __shared__ int buf[kGroups];
  const int64_t row = blockIdx.y;
  const uint32_t T = result[row].prefix;
  const float* s = scores + row * N;
  int gt = 0, eq = 0;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int64_t n = static_cast<int64_t>(blockIdx.x) * kChunk + i * kThreads + threadIdx.x;
    if (n < N) {
      const uint32_t key = tmath::order_key(s[n]);
      gt += key > T;
      eq += key == T;
    }
  }
  gt = block_sum(gt, buf);
  eq = block_sum(eq, buf);
  if (threadIdx.x == 0) chunk_counts[row * gridDim.x + blockIdx.x] = make_int2(gt, eq);
}

__global__ void __launch_bounds__(kThreads)
    topk_write_kernel(int64_t* __restrict__ out,                // [R, k]
                      const int2* __restrict__ chunk_counts,    // [R, chunks]
                      const TopkState* __restrict__ result,      // [R]
                      const float* __restrict__ scores,         // [R, N]
                      int64_t N, int64_t k) {
  // Keys of the chunk, one pad word per 32 so that thread t reading its run [8t, 8t + 8) is conflict-free.
  __shared__ uint32_t keys[kChunk + kChunk / 32];
  __shared__ int buf[kGroups];
  const int64_t row = blockIdx.y, n0 = static_cast<int64_t>(blockIdx.x) * kChunk;
  const uint32_t T = result[row].prefix;
  const int need = result[row].remaining;  // keys == T to keep, lowest indices first
  int gt_before = 0, eq_before = 0;        // over the chunks before this one
  for (int c = threadIdx.x; c < static_cast<int>(blockIdx.x); c += kThreads) {
    const int2 cc = chunk_counts[row * gridDim.x + c];
    gt_before += cc.x;
    eq_before += cc.y;
  }
  gt_before = block_sum(gt_before, buf);
  eq_before = block_sum(eq_before, buf);
  const int quota = max(0, need - eq_before);  // keys == T this chunk may still keep
  const int64_t base = gt_before + min(eq_before, need);
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int e = i * kThreads + threadIdx.x;
    const int64_t n = n0 + e;
    keys[e + e / 32] = n < N ? tmath::order_key(scores[row * N + n]) : 0u;
  }
  __syncthreads();
  int gt = 0, eq = 0;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int e = kPerThread * threadIdx.x + i;
    const uint32_t key = keys[e + e / 32];
    const bool valid = n0 + e < N;
    gt += valid && key > T;
    eq += valid && key == T;
  }
  // One scan for both counts: each is <= kChunk < 2^16, so the low half never carries into the high half.
  const int packed = block_exclusive_scan((eq << 16) | gt, buf);
  const int eq_thread = packed >> 16, gt_thread = packed & 0xffff;
  int64_t pos = base + gt_thread + min(eq_thread, quota);
  int eq_rank = eq_thread;
  int64_t* o = out + row * k;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int e = kPerThread * threadIdx.x + i;
    const uint32_t key = keys[e + e / 32];
    if (n0 + e >= N) continue;
    if (key > T) {
      o[pos++] = n0 + e;
    } else if (key == T) {
      if (eq_rank < quota) o[pos++] = n0 + e;
      ++eq_rank;
    }
  }
}

}  // namespace
}  // namespace cuda
}  // namespace triattention

using namespace triattention::cuda;

void zscore_group_reduce(at::Tensor& out, at::Tensor const& scores, at::Tensor const& candidates,
                         int64_t group_size, bool use_max) {
  triattention::checks::zscore_group_reduce(out, scores, candidates, group_size, c10::DeviceType::CUDA);
  const int64_t B = scores.size(0), Hq = scores.size(1), N = scores.size(2), Hkv = Hq / group_size;
  TORCH_CHECK(B * Hq <= 65535, "zscore_group_reduce: B * Hq must be <= 65535 on CUDA, got ", B * Hq);
  if (out.numel() == 0) return;
  const auto device = scores.device();
  const c10::cuda::OptionalCUDAGuard device_guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index());
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  // Allocated on the current stream by the caching allocator: no host sync, no cudaMalloc in steady state.
  const at::Tensor sums = at::empty({2, B * Hq, chunks}, scores.options().dtype(at::kDouble));
  const at::Tensor counts = at::empty({B, chunks}, scores.options().dtype(at::kLong));
  double* part_sum = sums.data_ptr<double>();
  double* part_sq = part_sum + B * Hq * chunks;
  int64_t* part_count = counts.data_ptr<int64_t>();
  const float* s = scores.data_ptr<float>();
  const bool* c = candidates.data_ptr<bool>();
  zscore_sum_kernel<<<dim3(chunks, B * Hq), kThreads, 0, stream>>>(part_sum, part_count, s, c, Hq, N);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  zscore_sqdev_kernel<<<dim3(chunks, B * Hq), kThreads, 0, stream>>>(part_sq, part_sum, part_count, s, c, Hq, N);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const size_t smem = 2 * sizeof(float) * group_size;
  TORCH_CHECK(smem <= 32 * 1024, "zscore_group_reduce: group_size ", group_size, " too large");
  zscore_reduce_kernel<<<dim3(chunks, B * Hkv), kThreads, smem, stream>>>(
      out.data_ptr<float>(), part_sum, part_sq, part_count, s, c, Hkv, N, (int)group_size, use_max);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void select_topk(at::Tensor& out, at::Tensor const& scores, int64_t k) {
  triattention::checks::select_topk(out, scores, k, c10::DeviceType::CUDA);
  const int64_t R = scores.size(0), N = scores.size(1);
  TORCH_CHECK(N < (int64_t{1} << 31), "select_topk: N must be < 2^31 on CUDA, got ", N);
  TORCH_CHECK(R <= 65535, "select_topk: R must be <= 65535 on CUDA, got ", R);
  if (out.numel() == 0) return;
  const auto device = scores.device();
  const c10::cuda::OptionalCUDAGuard device_guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index());
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  // int32 workspace: [R, chunks] (gt, eq) counts first (int2, 8-byte aligned at the base), then per pass a
  // [R, 256] histogram and an [R] ticket (both must start at zero), then [kPasses, R] states.
  const int64_t count_ints = R * chunks * 2, hist_ints = kPasses * R * 256, ticket_ints = kPasses * R;
  const int64_t state_ints = kPasses * R * 2;
  const at::Tensor ws =
      at::zeros({count_ints + hist_ints + ticket_ints + state_ints}, scores.options().dtype(at::kInt));
  auto* chunk_counts = reinterpret_cast<int2*>(ws.data_ptr<int>());
  int* hist = ws.data_ptr<int>() + count_ints;
  int* ticket = hist + hist_ints;
  auto* state = reinterpret_cast<TopkState*>(ticket + ticket_ints);
  const float* s = scores.data_ptr<float>();
  const dim3 grid(chunks, R);
  for (int pass = 0; pass < kPasses; ++pass) {
    topk_radix_kernel<<<grid, kThreads, 0, stream>>>(hist + pass * R * 256, ticket + pass * R, state, s, N, k, pass);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const TopkState* result = state + (kPasses - 1) * R;
  topk_count_kernel<<<grid, kThreads, 0, stream>>>(chunk_counts, result, s, N);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  topk_write_kernel<<<grid, kThreads, 0, stream>>>(out.data_ptr<int64_t>(), chunk_counts, result, s, N, k);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
