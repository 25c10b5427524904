// SPDX-License-Identifier: Apache-2.0
// Reductions and scans over a 32-lane group or a whole block, built on common.cuh's shuffles and barriers. A header
// of its own so the CPU runs of the kernels (tests/cuda_on_cpu/common.cuh stands in for common.cuh) use these very
// functions.
#pragma once

#include <cstdint>

namespace triattention {
namespace cuda {

// Sum over a 32-lane group, every lane gets the total. A fixed butterfly: the result does not depend on timing,
// so every block that reduces the same values gets the same bits.
template <typename T>
__device__ __forceinline__ T group_sum(T v) {
#pragma unroll
  for (int m = kLaneGroup / 2; m > 0; m >>= 1) v += shfl_xor(v, m, kLaneGroup);
  return v;
}

// Sum over the block (kThreads threads), returned to every thread; deterministic (fixed order). `buf` holds
// kThreads / kLaneGroup values and may be reused after the call.
template <typename T>
__device__ T block_sum(T v, T* buf) {
  constexpr int kGroups = kThreads / kLaneGroup;
  v = group_sum(v);
  if (threadIdx.x % kLaneGroup == 0) buf[threadIdx.x / kLaneGroup] = v;
  __syncthreads();
  T total = buf[0];
#pragma unroll
  for (int i = 1; i < kGroups; ++i) total += buf[i];
  __syncthreads();
  return total;
}

// Exclusive prefix sum over the block (kThreads threads, in thread order); `buf` holds kThreads / kLaneGroup ints.
__device__ __forceinline__ int block_exclusive_scan(int v, int* buf) {
  constexpr int kGroups = kThreads / kLaneGroup;
  const int lane = threadIdx.x % kLaneGroup, group = threadIdx.x / kLaneGroup;
  int x = v;
#pragma unroll
  for (int d = 1; d < kLaneGroup; d <<= 1) {
    const int y = shfl_up(x, d, kLaneGroup);
    if (lane >= d) x += y;
  }
  if (lane == kLaneGroup - 1) buf[group] = x;
  __syncthreads();
  int before = 0;
#pragma unroll
  for (int i = 0; i < kGroups; ++i) before += i < group ? buf[i] : 0;
  __syncthreads();
  return before + x - v;
}

}  // namespace cuda
}  // namespace triattention
