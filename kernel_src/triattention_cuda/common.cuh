// SPDX-License-Identifier: Apache-2.0
// Device helpers shared by the CUDA (and, hipified, ROCm) kernels of kernel_src/OPS.md.
//
// Portability: every cross-lane operation works inside groups of at most 32 lanes (the shuffle `width`), so the
// code is the same on 32-wide warps and on 64-wide ROCm wavefronts; blocks are multiples of 64 threads, so no
// wavefront is ever partial and every lane of a group reaches each shuffle.
#pragma once

// Device code only: no ATen, no exceptions (host entries and checks live in ops.cpp, see launch.h).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../triattention_math.h"
#include "key_types.cuh"
#include "launch.h"

#if defined(USE_ROCM) || defined(__HIP_PLATFORM_AMD__)
#define TRIATT_ROCM 1
#endif

namespace triattention {
namespace cuda {

namespace tmath = triattention::math;

constexpr int kThreads = 256;   // threads per block of every kernel (a multiple of 64, see above)
constexpr int kLaneGroup = 32;  // lanes of one shuffle group (a warp on NVIDIA, half a CDNA wavefront)

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

template <typename T>
__device__ __forceinline__ T shfl_xor(T v, int lane_mask, int width) {
#ifdef TRIATT_ROCM
  return __shfl_xor(v, lane_mask, width);
#else
  return __shfl_xor_sync(0xffffffffu, v, lane_mask, width);
#endif
}

template <typename T>
__device__ __forceinline__ T shfl_up(T v, unsigned int delta, int width) {
#ifdef TRIATT_ROCM
  return __shfl_up(v, delta, width);
#else
  return __shfl_up_sync(0xffffffffu, v, delta, width);
#endif
}

// The error of the launch just made (a bad configuration shows up here, not at the next sync).
inline cudaError_t launched() { return cudaGetLastError(); }

// Lets `kernel` launch with `bytes` of dynamic shared memory (above 48 KB it must opt in). The function pointer goes
// as const void*: HIP has only that overload (hipified, this is hipFuncSetAttribute).
template <typename Kernel>
inline cudaError_t allow_dynamic_smem(Kernel kernel, int64_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
}

// cp.async (sm_80+): global loads straight into shared memory, so the bytes in flight are bounded by shared memory
// instead of registers. Elsewhere (ROCm, sm < 80) kHaveCpAsync is false and callers take their register path.
#if !defined(TRIATT_ROCM) && (!defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800)
constexpr bool kHaveCpAsync = true;
#else
constexpr bool kHaveCpAsync = false;  // staged kernels compile to their register paths there
#endif

// Copies sizeof(raw_t) (8 or 16) bytes, or writes zeros when !valid (src-size 0; src must still be a mapped
// address). 16 bytes bypass L1 (.cg, streamed data), 8 bytes can only go through it (.ca).
template <typename raw_t>
__device__ __forceinline__ void cp_async(raw_t* dst, const void* src, bool valid) {
#if !defined(TRIATT_ROCM)
  static_assert(sizeof(raw_t) == 8 || sizeof(raw_t) == 16, "cp.async chunks of 8 or 16 bytes");
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  if constexpr (sizeof(raw_t) == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(addr), "l"(src), "r"(valid ? 8 : 0)
                 : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if !defined(TRIATT_ROCM)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
#if !defined(TRIATT_ROCM)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}
// Waits until at most `pending` of this thread's committed groups are still in flight (pending < 8, tuning.h).
__device__ __forceinline__ void cp_async_wait_pending(int pending) {
  switch (pending) {
    case 0: cp_async_wait<0>(); break;
    case 1: cp_async_wait<1>(); break;
    case 2: cp_async_wait<2>(); break;
    case 3: cp_async_wait<3>(); break;
    case 4: cp_async_wait<4>(); break;
    case 5: cp_async_wait<5>(); break;
    case 6: cp_async_wait<6>(); break;
    default: cp_async_wait<7>(); break;
  }
}

}  // namespace cuda
}  // namespace triattention

#include "block_reduce.cuh"
