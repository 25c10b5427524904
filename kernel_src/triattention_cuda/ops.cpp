// SPDX-License-Identifier: Apache-2.0
// Host entries of the CUDA/ROCm ops (kernel_src/OPS.md), compiled by the host compiler like the binding: the
// shared argument checks, the device guard and stream, workspaces from the caching allocator, then one call into
// the kernels' launchers (launch.h). Every exception is thrown from here, none from nvcc-compiled code.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "../triattention_checks.h"
#include "launch.h"

namespace {

namespace tc = triattention::cuda;

int device_attribute(cudaDeviceAttr attr, c10::DeviceIndex device) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, device));
  return value;
}

// TRIATTENTION_CUDA_TUNE, read at every call so a benchmark can change it between calls (a getenv is ~100 ns).
tc::Tuning tuning() {
  tc::Tuning t;
  const std::string error = tc::parse_tuning(std::getenv("TRIATTENTION_CUDA_TUNE"), t);
  TORCH_CHECK(error.empty(), error, "; unset it for the built-in launch shapes");
  return t;
}

tc::KeyType key_type(at::ScalarType dtype) {
  tc::KeyType type = tc::KeyType::kFloat32;
  triattention::checks::with_key_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    type = std::is_same_v<T, float> ? tc::KeyType::kFloat32
           : std::is_same_v<T, at::BFloat16> ? tc::KeyType::kBFloat16
                                              : tc::KeyType::kFloat16;
  });
  return type;
}

}  // namespace

void score_keys(at::Tensor& out, at::Tensor const& keys, at::Tensor const& trig_weights,
                at::Tensor const& norm_weights, int64_t rotary_dim, bool interleaved) {
  triattention::checks::score_keys(out, keys, trig_weights, norm_weights, rotary_dim, c10::DeviceType::CUDA);
  const int64_t B = keys.size(0), Hkv = keys.size(1), N = keys.size(2), D = keys.size(3);
  const int64_t Hq = trig_weights.size(1), O = trig_weights.size(2);
  TORCH_CHECK(B * Hkv <= 65535, "score_keys: B * Hkv must be <= 65535 on CUDA, got ", B * Hkv);
  if (out.numel() == 0) return;
  const c10::cuda::OptionalCUDAGuard device_guard(keys.device());
  const auto index = keys.device().index();
  const int64_t max_smem = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, index);
  const int64_t need = tc::score_keys_tile_bytes(D, rotary_dim) + tc::score_keys_head_bytes(D, O, rotary_dim);
  // Only the generic path uses shared memory; its minimum (one query head) bounds what any shape needs.
  TORCH_CHECK(need <= max_smem, "score_keys needs ", need, " bytes of shared memory for one query head (O=", O,
              ", D=", D, "), device allows ", max_smem);
  const tc::ScoreKeysArgs args{out.data_ptr<float>(), keys.data_ptr(), key_type(keys.scalar_type()),
                               trig_weights.data_ptr<float>(), norm_weights.data_ptr<float>(),
                               B, Hkv, N, D, Hq / Hkv, O, rotary_dim, interleaved,
                               keys.stride(0), keys.stride(1), keys.stride(2)};
  C10_CUDA_CHECK(tc::launch_score_keys(args, device_attribute(cudaDevAttrMultiProcessorCount, index), max_smem,
                                       tuning(), c10::cuda::getCurrentCUDAStream(index)));
}

void zscore_group_reduce(at::Tensor& out, at::Tensor const& scores, at::Tensor const& candidates,
                         int64_t group_size, bool use_max) {
  triattention::checks::zscore_group_reduce(out, scores, candidates, group_size, c10::DeviceType::CUDA);
  const int64_t B = scores.size(0), Hq = scores.size(1), N = scores.size(2);
  TORCH_CHECK(B * Hq <= 65535, "zscore_group_reduce: B * Hq must be <= 65535 on CUDA, got ", B * Hq);
  TORCH_CHECK(group_size <= 4096, "zscore_group_reduce: group_size must be <= 4096 on CUDA, got ", group_size);
  if (out.numel() == 0) return;
  const c10::cuda::OptionalCUDAGuard device_guard(scores.device());
  const int64_t chunks = tc::select_chunks(N);
  // Allocated on the current stream by the caching allocator: no host sync, no cudaMalloc in steady state.
  const at::Tensor sums = at::empty({2, B * Hq, chunks}, scores.options().dtype(at::kDouble));
  const at::Tensor counts = at::empty({B, chunks}, scores.options().dtype(at::kLong));
  const tc::ZscoreArgs args{out.data_ptr<float>(), scores.data_ptr<float>(), candidates.data_ptr<bool>(),
                            B, Hq, N, group_size, use_max, sums.data_ptr<double>(), counts.data_ptr<int64_t>()};
  C10_CUDA_CHECK(tc::launch_zscore_group_reduce(args, c10::cuda::getCurrentCUDAStream(scores.device().index())));
}

void select_topk(at::Tensor& out, at::Tensor const& scores, int64_t k) {
  triattention::checks::select_topk(out, scores, k, c10::DeviceType::CUDA);
  const int64_t R = scores.size(0), N = scores.size(1);
  TORCH_CHECK(N < (int64_t{1} << 31), "select_topk: N must be < 2^31 on CUDA, got ", N);
  TORCH_CHECK(R <= 65535, "select_topk: R must be <= 65535 on CUDA, got ", R);
  if (out.numel() == 0) return;
  const c10::cuda::OptionalCUDAGuard device_guard(scores.device());
  const at::Tensor ws = at::zeros({tc::TopkWorkspace(R, N).total}, scores.options().dtype(at::kInt));
  C10_CUDA_CHECK(tc::launch_select_topk(out.data_ptr<int64_t>(), scores.data_ptr<float>(), R, N, k,
                                        ws.data_ptr<int>(),
                                        c10::cuda::getCurrentCUDAStream(scores.device().index())));
}

void compact_(at::TensorList caches, at::Tensor const& indices) {
  triattention::checks::compact(caches, indices, c10::DeviceType::CUDA);
  const int64_t B = indices.size(0), H = indices.size(1), K = indices.size(2);
  if (caches.empty() || indices.numel() == 0) return;
  const c10::cuda::OptionalCUDAGuard device_guard(indices.device());
  const auto index = indices.device().index();
  std::vector<tc::CompactCache> views;
  views.reserve(caches.size());
  for (const auto& c : caches) {
    const int64_t es = c.element_size();
    views.push_back({static_cast<char*>(c.data_ptr()), c.stride(0) * es, c.stride(1) * es, c.stride(2) * es,
                     c.size(2), c.size(3) * es});
  }
  const int64_t n = static_cast<int64_t>(views.size());
  const tc::Tuning tune = tuning();
  const int64_t max_smem = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, index);
  const int chunk_bytes = tc::compact_chunk_bytes(tune, max_smem);
  const int64_t ws_ints = tc::compact_workspace_ints(views.data(), n, B, H, K, chunk_bytes);
  const at::Tensor ws = ws_ints > 0 ? at::zeros({ws_ints}, indices.options().dtype(at::kInt)) : at::Tensor();
  C10_CUDA_CHECK(tc::launch_compact(views.data(), n, indices.data_ptr<int64_t>(), B, H, K,
                                    device_attribute(cudaDevAttrMultiProcessorCount, index), max_smem, tune,
                                    ws_ints > 0 ? ws.data_ptr<int>() : nullptr,
                                    c10::cuda::getCurrentCUDAStream(index)));
}
