// SPDX-License-Identifier: Apache-2.0
// The boundary between the host entries (ops.cpp, compiled by the host compiler) and the kernels (*.cu, compiled by
// nvcc/hipcc): plain pointers, sizes and strides in, a cudaError_t out. Argument checks, device guards, streams,
// workspaces and every C++ exception stay on the host side, so nvcc-compiled code never throws and the .cu files
// need no ATen headers (which also makes them compile several times faster).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <initializer_list>

#include "tuning.h"

namespace triattention {
namespace cuda {

enum class KeyType { kFloat32, kBFloat16, kFloat16 };

// ---- score_keys (OPS.md op 1) ----
struct ScoreKeysArgs {
  float* out;          // [B, Hq, N]
  const void* keys;    // [B, Hkv, N, D], last-dim stride 1
  KeyType key_type;
  const float* trig;   // [B, Hq, O, D]
  const float* norm_w; // [B, Hq, rotary_dim / 2]
  int64_t B, Hkv, N, D, G, O, rotary_dim;
  bool interleaved;
  int64_t ks_b, ks_h, ks_n;  // key strides in elements
};

// The generic path stages kScoreTileKeys fp32 key rows (plus pair norms) and the augmented weight rows of the query
// heads of one launch in shared memory; the host checks the device's limit with these sizes.
constexpr int64_t kScoreTileKeys = 64;
inline int64_t score_keys_tile_bytes(int64_t D, int64_t rotary_dim) {
  return static_cast<int64_t>(sizeof(float)) * kScoreTileKeys * (D + rotary_dim / 2 + 1);
}
inline int64_t score_keys_head_bytes(int64_t D, int64_t O, int64_t rotary_dim) {
  return static_cast<int64_t>(sizeof(float)) * O * (D + rotary_dim / 2);
}

// `sms`, `max_smem_optin`: the device's multiprocessor count and opt-in shared memory per block.
cudaError_t launch_score_keys(const ScoreKeysArgs& a, int sms, int64_t max_smem_optin, const Tuning& tuning,
                              cudaStream_t stream);
// The generic path alone (score_keys_generic.cu); launch_score_keys calls it for shapes its fast path does not take.
cudaError_t launch_score_keys_generic(const ScoreKeysArgs& a, int64_t max_smem_optin, cudaStream_t stream);

// ---- zscore_group_reduce (op 2) ----
constexpr int64_t kSelectChunk = 2048;  // scores per block of the zscore and top-k kernels
inline int64_t select_chunks(int64_t N) { return (N + kSelectChunk - 1) / kSelectChunk; }

struct ZscoreArgs {
  float* out;               // [B, Hkv, N]
  const float* scores;      // [B, Hq, N]
  const bool* candidates;   // [B, N]
  int64_t B, Hq, N, group_size;
  bool use_max;
  double* part_sum;         // workspace [2, B * Hq, chunks]
  int64_t* part_count;      // workspace [B, chunks]
};

cudaError_t launch_zscore_group_reduce(const ZscoreArgs& a, cudaStream_t stream);

// ---- select_topk (op 3) ----
constexpr int kTopkPasses = 4;  // 8 radix bits per pass over 32-bit order keys
// The int32 workspace, in this order: [R, chunks] (gt, eq) pairs (8-byte aligned at the base), kTopkPasses
// [R, 256] histograms, kTopkPasses [R] tickets, [kTopkPasses, R] states of two ints. It must be zeroed before the
// launch. The host sizes it with `total`, the launcher finds its parts with the offsets.
struct TopkWorkspace {
  int64_t counts, hist, ticket, state, total;  // offsets in ints, and the size
  TopkWorkspace(int64_t R, int64_t N)
      : counts(0),
        hist(R * select_chunks(N) * 2),
        ticket(hist + kTopkPasses * R * 256),
        state(ticket + kTopkPasses * R),
        total(state + kTopkPasses * R * 2) {}
};

cudaError_t launch_select_topk(int64_t* out, const float* scores, int64_t R, int64_t N, int64_t k, int* workspace,
                               cudaStream_t stream);

// ---- compact_ (op 4) ----
struct CompactCache {
  char* base;
  int64_t stride_b, stride_h, stride_c;  // bytes
  int64_t capacity;                      // C
  int64_t row_bytes;                     // D * element size
};

// The widest vector (16, 8, 4, 2 or 1 bytes) that divides a cache's base address, strides and row: the unit both
// compact_ paths move (the chunked path takes only 16).
inline int compact_vec_bytes(const CompactCache& c) {
  int v = 16;
  for (int64_t x : {static_cast<int64_t>(reinterpret_cast<uintptr_t>(c.base)), c.stride_b, c.stride_h, c.stride_c,
                    c.row_bytes})
    while (v > 1 && x % v != 0) v >>= 1;
  return v;
}

// `workspace`: compact_workspace_ints(..., compact_chunk_bytes(tuning, max_smem_optin)) zeroed ints, or nullptr
// when that is 0.
cudaError_t launch_compact(const CompactCache* caches, int64_t n_caches, const int64_t* indices, int64_t B,
                           int64_t H, int64_t K, int sms, int64_t max_smem_optin, const Tuning& tuning,
                           int* workspace, cudaStream_t stream);

// The chunked path (compact_chunked.cu) takes the caches whose rows are 16-byte aligned and fit a chunk; its
// blocks take tickets and publish "reads done" flags, which need compact_workspace_ints zeroed ints. compact.cu
// sends it those caches and the others through its column slices.
// Chunk bytes of a launch (0: no chunked path): the tuning's, while a chunk fits the shared memory of a block.
inline int compact_chunk_bytes(const Tuning& tuning, int64_t max_smem_optin) {
  const int bytes = or_builtin(tuning.compact_chunk, kBuiltinCompactChunk);
  return bytes <= max_smem_optin ? bytes : 0;
}
bool compact_chunkable(const CompactCache& cache, int chunk_bytes);
int64_t compact_workspace_ints(const CompactCache* caches, int64_t n_caches, int64_t B, int64_t H, int64_t K,
                               int chunk_bytes);
cudaError_t launch_compact_chunked(const CompactCache* caches, int64_t n_caches, const int64_t* indices, int64_t B,
                                   int64_t H, int64_t K, int chunk_bytes, int* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace triattention
