// SPDX-License-Identifier: Apache-2.0
// Argument checks of the ops in kernel_src/OPS.md, shared by the CPU and CUDA/ROCm host entries so that every
// backend rejects the same inputs with the same messages. Each takes the device type its backend serves.
#pragma once

// Light ATen headers only: nvcc parses this for every .cu file, and <torch/all.h> triples the compile time.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace triattention {
namespace checks {

inline void on_device(const at::Tensor& t, const char* name, c10::DeviceType type, const c10::Device& device) {
  TORCH_CHECK(t.device().type() == type, name, " must be a ", c10::DeviceTypeName(type), " tensor, got device ",
              t.device());
  TORCH_CHECK(t.device() == device, name, " must be on ", device, ", got ", t.device());
}

inline void f32_contiguous(const at::Tensor& t, const char* name, c10::DeviceType type,
                           const c10::Device& device) {
  on_device(t, name, type, device);
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous, got strides ", t.strides());
}

// out [B, Hq, N] f32; keys [B, Hkv, N, D] f16/bf16/f32, last-dim stride 1; trig_weights [B, Hq, O, D] f32;
// norm_weights [B, Hq, rotary_dim / 2] f32.
inline void score_keys(const at::Tensor& out, const at::Tensor& keys, const at::Tensor& trig_weights,
                       const at::Tensor& norm_weights, int64_t rotary_dim, c10::DeviceType type) {
  TORCH_CHECK(keys.device().type() == type, "keys must be a ", c10::DeviceTypeName(type), " tensor, got device ",
              keys.device());
  const auto device = keys.device();
  TORCH_CHECK(keys.dim() == 4, "keys must be [B, Hkv, N, D], got shape ", keys.sizes());
  const auto kdt = keys.scalar_type();
  TORCH_CHECK(kdt == at::kFloat || kdt == at::kHalf || kdt == at::kBFloat16,
              "keys must be float16, bfloat16 or float32, got ", kdt);
  TORCH_CHECK(keys.size(3) <= 1 || keys.stride(3) == 1, "keys must have last-dim stride 1, got strides ",
              keys.strides());
  const int64_t B = keys.size(0), Hkv = keys.size(1), N = keys.size(2), D = keys.size(3);
  f32_contiguous(trig_weights, "trig_weights", type, device);
  TORCH_CHECK(trig_weights.dim() == 4 && trig_weights.size(0) == B && trig_weights.size(3) == D &&
                  trig_weights.size(2) >= 1,
              "trig_weights must be [B=", B, ", Hq, O>=1, D=", D, "], got shape ", trig_weights.sizes());
  const int64_t Hq = trig_weights.size(1);
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, "Hq (", Hq, ") must be a multiple of Hkv (", Hkv, ")");
  TORCH_CHECK(rotary_dim > 0 && rotary_dim % 2 == 0 && rotary_dim <= D,
              "rotary_dim must be even and in (0, D=", D, "], got ", rotary_dim);
  f32_contiguous(norm_weights, "norm_weights", type, device);
  TORCH_CHECK(norm_weights.dim() == 3 && norm_weights.size(0) == B && norm_weights.size(1) == Hq &&
                  norm_weights.size(2) == rotary_dim / 2,
              "norm_weights must be [B=", B, ", Hq=", Hq, ", R/2=", rotary_dim / 2, "], got shape ",
              norm_weights.sizes());
  f32_contiguous(out, "out", type, device);
  TORCH_CHECK(out.dim() == 3 && out.size(0) == B && out.size(1) == Hq && out.size(2) == N,
              "out must be [B=", B, ", Hq=", Hq, ", N=", N, "], got shape ", out.sizes());
}

// Calls f(scalar_t{}) for the key dtype, one of the three score_keys accepts: every backend dispatches that set.
template <typename F>
inline void with_key_type(at::ScalarType dtype, F&& f) {
  if (dtype == at::kFloat) {
    f(float{});
  } else if (dtype == at::kBFloat16) {
    f(at::BFloat16{});
  } else {
    f(at::Half{});
  }
}

// out [B, Hq / group_size, N] f32; scores [B, Hq, N] f32; candidates [B, N] bool.
inline void zscore_group_reduce(const at::Tensor& out, const at::Tensor& scores,
                                const at::Tensor& candidates, int64_t group_size, c10::DeviceType type) {
  TORCH_CHECK(scores.device().type() == type, "scores must be a ", c10::DeviceTypeName(type),
              " tensor, got device ", scores.device());
  const auto device = scores.device();
  f32_contiguous(scores, "scores", type, device);
  TORCH_CHECK(scores.dim() == 3, "scores must be [B, Hq, N], got shape ", scores.sizes());
  const int64_t B = scores.size(0), Hq = scores.size(1), N = scores.size(2);
  TORCH_CHECK(group_size >= 1 && Hq % group_size == 0, "group_size must divide Hq (", Hq, "), got ",
              group_size);
  const int64_t Hkv = Hq / group_size;
  on_device(candidates, "candidates", type, device);
  TORCH_CHECK(candidates.scalar_type() == at::kBool, "candidates must be bool, got ", candidates.scalar_type());
  TORCH_CHECK(candidates.is_contiguous(), "candidates must be contiguous, got strides ", candidates.strides());
  TORCH_CHECK(candidates.dim() == 2 && candidates.size(0) == B && candidates.size(1) == N,
              "candidates must be [B=", B, ", N=", N, "], got shape ", candidates.sizes());
  f32_contiguous(out, "out", type, device);
  TORCH_CHECK(out.dim() == 3 && out.size(0) == B && out.size(1) == Hkv && out.size(2) == N,
              "out must be [B=", B, ", Hkv=", Hkv, ", N=", N, "], got shape ", out.sizes());
}

// out [R, k] int64; scores [R, N] f32.
inline void select_topk(const at::Tensor& out, const at::Tensor& scores, int64_t k, c10::DeviceType type) {
  TORCH_CHECK(scores.device().type() == type, "scores must be a ", c10::DeviceTypeName(type),
              " tensor, got device ", scores.device());
  const auto device = scores.device();
  f32_contiguous(scores, "scores", type, device);
  TORCH_CHECK(scores.dim() == 2, "scores must be [R, N], got shape ", scores.sizes());
  const int64_t R = scores.size(0), N = scores.size(1);
  TORCH_CHECK(k >= 0 && k <= N, "k must be in [0, N=", N, "], got ", k);
  on_device(out, "out", type, device);
  TORCH_CHECK(out.scalar_type() == at::kLong, "out must be int64, got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), "out must be contiguous, got strides ", out.strides());
  TORCH_CHECK(out.dim() == 2 && out.size(0) == R && out.size(1) == k, "out must be [R=", R, ", k=", k,
              "], got shape ", out.sizes());
}

// caches: each [B, H, C >= K, D] float, last-dim stride 1; indices [B, H, K] int64.
inline void compact(at::TensorList caches, const at::Tensor& indices, c10::DeviceType type) {
  TORCH_CHECK(indices.device().type() == type, "indices must be a ", c10::DeviceTypeName(type),
              " tensor, got device ", indices.device());
  const auto device = indices.device();
  TORCH_CHECK(indices.scalar_type() == at::kLong, "indices must be int64, got ", indices.scalar_type());
  TORCH_CHECK(indices.is_contiguous(), "indices must be contiguous, got strides ", indices.strides());
  TORCH_CHECK(indices.dim() == 3, "indices must be [B, H, K], got shape ", indices.sizes());
  const int64_t B = indices.size(0), H = indices.size(1), K = indices.size(2);
  for (size_t i = 0; i < caches.size(); ++i) {
    const auto& c = caches[i];
    TORCH_CHECK(c.device().type() == type && c.device() == device, "caches[", i, "] must be on ", device,
                ", got ", c.device());
    TORCH_CHECK(c.dim() == 4 && c.size(0) == B && c.size(1) == H && c.size(2) >= K, "caches[", i,
                "] must be [B=", B, ", H=", H, ", C>=", K, ", D], got shape ", c.sizes());
    TORCH_CHECK(c.is_floating_point(), "caches[", i, "] must be a float tensor, got ", c.scalar_type());
    TORCH_CHECK(c.size(3) <= 1 || c.stride(3) == 1, "caches[", i, "] must have last-dim stride 1, got strides ",
                c.strides());
  }
}

}  // namespace checks
}  // namespace triattention
