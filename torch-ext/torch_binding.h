// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <torch/torch.h>

// out [B, Hq, N] f32; keys [B, Hkv, N, D] f16/bf16/f32 (last-dim stride 1); trig_weights [B, Hq, O, D] f32;
// norm_weights [B, Hq, rotary_dim / 2] f32.
void score_keys(torch::Tensor &out, torch::Tensor const &keys, torch::Tensor const &trig_weights,
                torch::Tensor const &norm_weights, int64_t rotary_dim, bool interleaved);

// out [B, Hkv, N] f32; scores [B, Hq, N] f32; candidates [B, N] bool.
void zscore_group_reduce(torch::Tensor &out, torch::Tensor const &scores, torch::Tensor const &candidates,
                         int64_t group_size, bool use_max);

// out [R, k] int64; scores [R, N] f32.
void select_topk(torch::Tensor &out, torch::Tensor const &scores, int64_t k);

// caches: each [B, H, C, D] (last-dim stride 1), compacted in place; indices [B, H, K] int64.
void compact_(at::TensorList caches, torch::Tensor const &indices);
