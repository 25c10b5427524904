// SPDX-License-Identifier: Apache-2.0
// Scalar arithmetic shared by the CUDA/ROCm kernels and the CPU kernels, so the CPU build tests the same
// math the GPU runs. Everything is fp32 except the z-score moments, which are accumulated in double.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define TRIATT_HD __host__ __device__ __forceinline__
#elif defined(__HIPCC__)
#define TRIATT_HD __host__ __device__ inline  // __forceinline__ needs hip_runtime.h, which may come later
#else
#define TRIATT_HD inline
#endif

namespace triattention {
namespace math {

// Magnitude of one rotary frequency pair.
TRIATT_HD float pair_norm(float a, float b) { return sqrtf(a * a + b * b); }

// Element indices of rotary pair f for rotary_dim R: half pairing (f, f + R/2), interleaved (2f, 2f + 1).
TRIATT_HD int pair_first(int f, int half_rotary, bool interleaved) { return interleaved ? 2 * f : f; }
TRIATT_HD int pair_second(int f, int half_rotary, bool interleaved) {
  return interleaved ? 2 * f + 1 : f + half_rotary;
}

// One step of a dot product (nvcc contracts it to an FMA; the CPU build keeps mul + add so it vectorizes
// without FMA hardware).
// Templated so the CPU build can apply it to SIMD vectors (GCC vector extensions) with a scalar weight.
template <typename T, typename W>
TRIATT_HD T dot_acc(T acc, T k, W w) {
  return acc + k * w;
}

// Aggregation over trig offsets.
TRIATT_HD float offset_max(float a, float b) { return a > b ? a : b; }

// Mean and population std from moments over `count` candidates; std clamped to >= 1e-6.
TRIATT_HD float zs_mean(double sum, int64_t count) { return (float)(sum / (double)count); }
TRIATT_HD float zs_std(double sq_dev_sum, int64_t count) {
  float s = (float)sqrt(sq_dev_sum / (double)count);
  return s < 1e-6f ? 1e-6f : s;
}
TRIATT_HD double sq_dev(float s, float mean) {
  double d = (double)s - (double)mean;
  return d * d;
}
TRIATT_HD float zscore(float s, float mean, float std) { return (s - mean) / std; }

// Reduction of z-scores over the G query heads of one kv head.
TRIATT_HD float group_init(bool use_max) { return use_max ? -INFINITY : 0.0f; }
TRIATT_HD float group_step(float acc, float z, bool use_max) { return use_max ? (z > acc ? z : acc) : acc + z; }
TRIATT_HD float group_finish(float acc, int group_size, bool use_max) {
  return use_max ? acc : acc / (float)group_size;
}

// Top-k order: larger score first, ties -> lower index first. A strict total order for non-NaN scores.
TRIATT_HD bool ranks_before(float a, int64_t ia, float b, int64_t ib) { return a > b || (a == b && ia < ib); }

// Order-preserving map of a float to uint32 (larger float -> larger key; -inf is smallest but finite keys win).
TRIATT_HD uint32_t order_key(float x) {
  union {
    float f;
    uint32_t u;
  } v;
  v.f = x == 0.0f ? 0.0f : x;  // -0.0 and +0.0 compare equal, so they must map to one key
  return (v.u & 0x80000000u) ? ~v.u : (v.u | 0x80000000u);
}

}  // namespace math
}  // namespace triattention
