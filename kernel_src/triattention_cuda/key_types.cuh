// SPDX-License-Identifier: Apache-2.0
// The key element types of score_keys' kernels and their conversion to fp32. A header of its own so the CPU runs of
// the kernels (tests/cuda_on_cpu/common.cuh stands in for common.cuh) use these very functions.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "launch.h"

namespace triattention {
namespace cuda {

// 16-bit key elements as raw bits (the kernels convert them to fp32 themselves; both conversions are exact).
struct bf16_bits {
  uint16_t x;
};
struct f16_bits {
  uint16_t x;
};

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16_bits v) {  // bf16 = the upper half of an fp32
  return __uint_as_float(static_cast<uint32_t>(v.x) << 16);
}
__device__ __forceinline__ float to_float(f16_bits v) { return __half2float(__ushort_as_half(v.x)); }

// Calls f(tag) with a value of the element type of `type`: float, bf16_bits or f16_bits.
template <typename F>
inline cudaError_t with_key_type(KeyType type, F&& f) {
  switch (type) {
    case KeyType::kFloat32: return f(float{});
    case KeyType::kBFloat16: return f(bf16_bits{});
    case KeyType::kFloat16: return f(f16_bits{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace triattention
