// SPDX-License-Identifier: Apache-2.0
#include <torch/library.h>

#include "registration.h"
#include "torch_binding.h"

TORCH_LIBRARY_EXPAND(TORCH_EXTENSION_NAME, ops) {
  // Per (b, q head, key): max over offsets of <k, W> plus sum of c_f * |k_f| over rotary pairs.
  ops.def("score_keys(Tensor! out, Tensor keys, Tensor trig_weights, Tensor norm_weights, int rotary_dim, "
          "bool interleaved) -> ()");
  // Per-head z-scores over candidate keys, reduced (max or mean) over each kv head's query heads.
  ops.def("zscore_group_reduce(Tensor! out, Tensor scores, Tensor candidates, int group_size, bool use_max) -> ()");
  // Indices of the k largest scores per row (ties -> lower index), sorted ascending.
  ops.def("select_topk(Tensor! out, Tensor scores, int k) -> ()");
  // In place, for every cache: cache[b, h, j] = cache[b, h, indices[b, h, j]] for j < K.
  ops.def("compact_(Tensor(a!)[] caches, Tensor indices) -> ()");
#if defined(CPU_KERNEL)
  ops.impl("score_keys", torch::kCPU, &score_keys);
  ops.impl("zscore_group_reduce", torch::kCPU, &zscore_group_reduce);
  ops.impl("select_topk", torch::kCPU, &select_topk);
  ops.impl("compact_", torch::kCPU, &compact_);
#elif defined(CUDA_KERNEL) || defined(ROCM_KERNEL)
  ops.impl("score_keys", torch::kCUDA, &score_keys);
  ops.impl("zscore_group_reduce", torch::kCUDA, &zscore_group_reduce);
  ops.impl("select_topk", torch::kCUDA, &select_topk);
  ops.impl("compact_", torch::kCUDA, &compact_);
#endif
}

REGISTER_EXTENSION(TORCH_EXTENSION_NAME)
