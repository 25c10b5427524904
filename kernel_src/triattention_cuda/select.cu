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
static_assert(kChunk == kSelectChunk, "launch.h sizes the workspaces with kSelectChunk");
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

constexpr int kPasses = kTopkPasses;

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

cudaError_t launch_zscore_group_reduce(const ZscoreArgs& a, cudaStream_t stream) {
  const int64_t Hkv = a.Hq / a.group_size, chunks = select_chunks(a.N);
  if (a.B * Hkv * a.N == 0) return cudaSuccess;
  double* part_sq = a.part_sum + a.B * a.Hq * chunks;
  zscore_sum_kernel<<<dim3(chunks, a.B * a.Hq), kThreads, 0, stream>>>(a.part_sum, a.part_count, a.scores,
                                                                      a.candidates, a.Hq, a.N);
  if (const cudaError_t err = launched()) return err;
  zscore_sqdev_kernel<<<dim3(chunks, a.B * a.Hq), kThreads, 0, stream>>>(part_sq, a.part_sum, a.part_count,
                                                                        a.scores, a.candidates, a.Hq, a.N);
  if (const cudaError_t err = launched()) return err;
  const size_t smem = 2 * sizeof(float) * a.group_size;
  zscore_reduce_kernel<<<dim3(chunks, a.B * Hkv), kThreads, smem, stream>>>(
      a.out, a.part_sum, part_sq, a.part_count, a.scores, a.candidates, Hkv, a.N, (int)a.group_size, a.use_max);
  return launched();
}

cudaError_t launch_select_topk(int64_t* out, const float* scores, int64_t R, int64_t N, int64_t k, int* workspace,
                               cudaStream_t stream) {
  if (R * k == 0) return cudaSuccess;
  const int64_t chunks = select_chunks(N);
  const TopkWorkspace layout(R, N);
  auto* chunk_counts = reinterpret_cast<int2*>(workspace + layout.counts);
  int* hist = workspace + layout.hist;
  int* ticket = workspace + layout.ticket;
  auto* state = reinterpret_cast<TopkState*>(workspace + layout.state);
  const dim3 grid(chunks, R);
  for (int pass = 0; pass < kPasses; ++pass) {
    topk_radix_kernel<<<grid, kThreads, 0, stream>>>(hist + pass * R * 256, ticket + pass * R, state, scores, N, k,
                                                     pass);
    if (const cudaError_t err = launched()) return err;
  }
  const TopkState* result = state + (kPasses - 1) * R;
  topk_count_kernel<<<grid, kThreads, 0, stream>>>(chunk_counts, result, scores, N);
  if (const cudaError_t err = launched()) return err;
  topk_write_kernel<<<grid, kThreads, 0, stream>>>(out, chunk_counts, result, scores, N, k);
  return launched();
}

}  // namespace cuda
}  // namespace triattention
