// SPDX-License-Identifier: Apache-2.0
// compact_ (kernel_src/OPS.md, op 4) on CUDA/ROCm: in place, cache[b, h, j] = old cache[b, h, indices[b, h, j]].
//
// Why it is safe in place. Within one (b, h) and one column range, a row r is read only by the j with
// indices[j] = r, and indices[j] >= j, so every reader of row r is at a position j <= r: row r is never read after
// position r, where it is written. One block walks j upward in tiles; it reads a whole tile (sources at or after
// the tile start, untouched so far) into registers, syncs, then writes the tile's rows. The next tile reads rows
// at or after its own start, which no earlier tile wrote, and its writes come after its own sync, which every
// thread reaches only once its loads of the previous tile have been consumed by its stores: no second sync is
// needed. Identity rows (indices[j] == j) are skipped.
//
// Where the parallelism comes from. Rows of different (b, h) are independent, and so are disjoint column ranges of
// the same rows: the argument above holds for each column range on its own. So each block owns one
// (b, h, column slice of 32 or 64 bytes, cache) (tuning.h may choose other widths): B * H * slices * caches blocks,
// each streaming K rows of its slice with up to kThreads * kUnitsPerThread vector loads in flight (more in the staged
// variant, see compact_slice_staged). Nothing is split along j, where blocks would need to order their reads before
// other blocks' writes (compact_chunked.cu does split along j, ordering them with flags; tuning compact_chunk).
#include "common.cuh"

#include <algorithm>
#include <vector>

namespace triattention {
namespace cuda {
namespace {

constexpr int kMaxCachesPerLaunch = 32;
constexpr int kUnitsPerThread = 8;

// A cache as the kernel walks it: the host's CompactCache plus the vector width and column slicing.
struct SlicedCache {
  char* base;
  int64_t stride_b, stride_h, stride_c;  // bytes
  int64_t capacity;                      // C
  int64_t row_units;                     // vec_bytes units per row
  int vec_bytes;                         // 16, 8, 4, 2 or 1: alignment of base, strides and row
  int slice_units;                       // units per column slice
  int slices;
};

struct CompactBatch {
  SlicedCache caches[kMaxCachesPerLaunch];
};

// One tile's sources: unit i of this thread (tile unit threadIdx.x + i * kThreads) into buf[i], its destination
// offset into dst[i] (-1: nothing to move).
template <typename vec_t, int kUnits>
__device__ __forceinline__ void load_tile(const SlicedCache& c, const int64_t* __restrict__ idx, const char* base,
                                          int64_t cols, int64_t j0, int64_t units, vec_t (&buf)[kUnits],
                                          int64_t (&dst)[kUnits]) {
#pragma unroll
  for (int i = 0; i < kUnits; ++i) {
    dst[i] = -1;
    const int64_t u = threadIdx.x + static_cast<int64_t>(i) * kThreads;
    if (u >= units) continue;
    const int64_t j = j0 + u / cols, col = u % cols;
    const int64_t src = idx[j];
    if (src <= j || src >= c.capacity) continue;  // identity row, or outside the contract (src < j)
    buf[i] = *reinterpret_cast<const vec_t*>(base + src * c.stride_c + col * static_cast<int64_t>(sizeof(vec_t)));
    dst[i] = j * c.stride_c + col * static_cast<int64_t>(sizeof(vec_t));
  }
}

template <typename vec_t, int kUnits>
__device__ __forceinline__ void store_tile(char* base, const vec_t (&buf)[kUnits], const int64_t (&dst)[kUnits]) {
#pragma unroll
  for (int i = 0; i < kUnits; ++i)
    if (dst[i] >= 0) *reinterpret_cast<vec_t*>(base + dst[i]) = buf[i];
}

// kPipelined: two tiles of half the units in flight, the next tile's loads issued before this tile's stores. That
// order is safe too: the next tile reads rows at or after its own start, which this tile's stores never reach.
template <typename vec_t, bool kPipelined>
__device__ void compact_slice(const SlicedCache& c, const int64_t* __restrict__ idx, int64_t b, int64_t h,
                              int slice, int64_t K) {
  constexpr int kUnits = kPipelined ? kUnitsPerThread / 2 : kUnitsPerThread;
  const int64_t col0 = static_cast<int64_t>(slice) * c.slice_units;
  const int64_t cols = min64(c.slice_units, c.row_units - col0);
  // A slice is at most 1024 bytes, so at most 1024 <= kTileUnits units wide: a tile holds >= 1 whole rows of it.
  constexpr int64_t kTileUnits = static_cast<int64_t>(kThreads) * kUnits;
  const int64_t tile_rows = kTileUnits / cols;
  char* base = c.base + b * c.stride_b + h * c.stride_h + col0 * static_cast<int64_t>(sizeof(vec_t));
  auto units_at = [&](int64_t j0) { return min64(tile_rows, K - j0) * cols; };
  vec_t buf[kUnits];
  int64_t dst[kUnits];
  if constexpr (!kPipelined) {
    for (int64_t j0 = 0; j0 < K; j0 += tile_rows) {
      load_tile(c, idx, base, cols, j0, units_at(j0), buf, dst);
      __syncthreads();  // every thread holds its sources of this tile: the tile's rows may be overwritten
      store_tile(base, buf, dst);
    }
  } else {
    // Two named register buffers (a runtime index into one array would put them in local memory).
    vec_t next[kUnits];
    int64_t next_dst[kUnits];
    load_tile(c, idx, base, cols, 0, units_at(0), buf, dst);
    for (int64_t j0 = 0; j0 < K; j0 += 2 * tile_rows) {  // every condition below is uniform over the block
      __syncthreads();
      const int64_t j1 = j0 + tile_rows;
      if (j1 < K) load_tile(c, idx, base, cols, j1, units_at(j1), next, next_dst);
      store_tile(base, buf, dst);
      if (j1 >= K) break;
      __syncthreads();
      if (j1 + tile_rows < K) load_tile(c, idx, base, cols, j1 + tile_rows, units_at(j1 + tile_rows), buf, dst);
      store_tile(base, next, next_dst);
    }
  }
}

// Staged (16-byte units, sm_80+): tiles go through a ring of `stages` shared-memory tiles by cp.async, so
// stages - 1 tiles of loads are in flight while a tile is stored, bounded by shared memory (32 KB per tile) instead of
// registers. Safe by the same argument: a tile's loads read rows at or after its own start, which no earlier tile's
// stores reach, whenever they are issued; a tile's stores wait for a barrier that every thread reaches only once its
// own loads of that tile have landed. A thread stores the units it loaded, from its own slots, and refills a slot
// one iteration after storing from it (that store's data came through a register, so the slot read is complete).
__device__ void compact_slice_staged(const SlicedCache& c, const int64_t* __restrict__ idx, int64_t b, int64_t h,
                                     int slice, int64_t K, int stages, uint4* ring) {
  constexpr int kUnits = kUnitsPerThread;
  const int64_t col0 = static_cast<int64_t>(slice) * c.slice_units;
  const int64_t cols = min64(c.slice_units, c.row_units - col0);
  constexpr int64_t kTileUnits = static_cast<int64_t>(kThreads) * kUnits;
  const int64_t tile_rows = kTileUnits / cols;
  const int64_t tiles = (K + tile_rows - 1) / tile_rows;
  char* base = c.base + b * c.stride_b + h * c.stride_h + col0 * static_cast<int64_t>(sizeof(uint4));
  ring += threadIdx.x;  // slot (s, i) of this thread: ring[(s * kUnits + i) * kThreads]
  // Unit i of tile t: its source row (or -1: nothing to move) and its row and column.
  auto source = [&](int64_t t, int i, int64_t& j, int64_t& col) -> int64_t {
    const int64_t u = threadIdx.x + static_cast<int64_t>(i) * kThreads;
    if (u >= min64(tile_rows, K - t * tile_rows) * cols) return -1;
    j = t * tile_rows + u / cols;
    col = u % cols;
    const int64_t src = idx[j];
    return src <= j || src >= c.capacity ? -1 : src;  // identity row, or outside the contract (src < j)
  };
  auto issue = [&](int64_t t, int s) {
    if (t < tiles) {
#pragma unroll
      for (int i = 0; i < kUnits; ++i) {
        int64_t j, col;
        const int64_t src = source(t, i, j, col);
        if (src >= 0)
          cp_async(ring + (s * kUnits + i) * kThreads, base + src * c.stride_c + col * int64_t{sizeof(uint4)}, true);
      }
    }
    cp_async_commit();  // one group per tile, empty past the end, so the wait count stays exact
  };
  for (int s = 0; s + 1 < stages; ++s) issue(s, s);
  int slot = 0;
  for (int64_t t = 0; t < tiles; ++t) {  // uniform over the block: every thread reaches each barrier
    issue(t + stages - 1, slot == 0 ? stages - 1 : slot - 1);
    cp_async_wait_pending(stages - 1);
    __syncthreads();  // every thread's loads of tile t have landed: its rows may be overwritten
#pragma unroll
    for (int i = 0; i < kUnits; ++i) {
      int64_t j, col;
      if (source(t, i, j, col) >= 0)
        *reinterpret_cast<uint4*>(base + j * c.stride_c + col * int64_t{sizeof(uint4)}) =
            ring[(slot * kUnits + i) * kThreads];
    }
    slot = slot + 1 == stages ? 0 : slot + 1;
  }
  cp_async_wait<0>();
}

// kMode 0: plain tiles; 1: pipelined (two half tiles); 2: staged (cp.async ring of `stages` tiles in dynamic shared
// memory) for caches of 16-byte units, plain for the others.
template <int kMode>
__global__ void __launch_bounds__(kThreads)
    compact_kernel(CompactBatch batch, const int64_t* __restrict__ indices,  // [B, H, K]
                   int64_t H, int64_t K, int max_slices, int stages) {
  const SlicedCache& c = batch.caches[blockIdx.y];
  const int64_t bh = blockIdx.x / max_slices;
  const int slice = static_cast<int>(blockIdx.x % max_slices);
  if (slice >= c.slices) return;  // the block is uniform: no thread reaches a barrier alone
  const int64_t b = bh / H, h = bh % H;
  const int64_t* idx = indices + bh * K;
  constexpr bool kPipelined = kMode == 1;
  if constexpr (kMode == 2 && kHaveCpAsync) {
    if (c.vec_bytes == 16) {
      extern __shared__ __align__(16) unsigned char smem_bytes[];
      compact_slice_staged(c, idx, b, h, slice, K, stages, reinterpret_cast<uint4*>(smem_bytes));
      return;
    }
  }
  switch (c.vec_bytes) {
    case 16: compact_slice<uint4, kPipelined>(c, idx, b, h, slice, K); break;
    case 8: compact_slice<uint2, kPipelined>(c, idx, b, h, slice, K); break;
    case 4: compact_slice<uint32_t, kPipelined>(c, idx, b, h, slice, K); break;
    case 2: compact_slice<uint16_t, kPipelined>(c, idx, b, h, slice, K); break;
    default: compact_slice<uint8_t, kPipelined>(c, idx, b, h, slice, K); break;
  }
}

template <int kMode>
cudaError_t launch_mode(const CompactBatch& batch, int n, const int64_t* indices, int64_t B, int64_t H, int64_t K,
                        int max_slices, int stages, int64_t smem, cudaStream_t stream) {
  auto kernel = compact_kernel<kMode>;
  if (const cudaError_t err = allow_dynamic_smem(kernel, smem)) return err;
  kernel<<<dim3(B * H * max_slices, n), kThreads, smem, stream>>>(batch, indices, H, K, max_slices, stages);
  return launched();
}

}  // namespace

cudaError_t launch_compact(const CompactCache* caches, int64_t n_caches, const int64_t* indices, int64_t B,
                           int64_t H, int64_t K, int sms, int64_t max_smem_optin, const Tuning& tuning,
                           int* workspace, cudaStream_t stream) {
  if (n_caches == 0 || B * H * K == 0) return cudaSuccess;
  const int chunk_bytes = compact_chunk_bytes(tuning, max_smem_optin);
  if (const cudaError_t err =
          launch_compact_chunked(caches, n_caches, indices, B, H, K, chunk_bytes, workspace, stream))
    return err;
  // 64-byte slices keep whole DRAM bursts per row; with few (b, h, cache) rows, 32-byte slices double the blocks.
  const int64_t row_sets = B * H * n_caches;
  const int slice_bytes =
      or_builtin(tuning.compact_slice, row_sets * 4 >= 2 * static_cast<int64_t>(sms) ? 64 : 32);
  const int64_t tile_bytes = int64_t{kThreads} * kUnitsPerThread * 16;
  const int stages = static_cast<int>(
      std::min<int64_t>(or_builtin(tuning.compact_stages, kBuiltinCompactStages), max_smem_optin / tile_bytes));
  const bool pipelined = or_builtin(tuning.compact_pipeline, kBuiltinCompactPipeline) == 1;
  std::vector<SlicedCache> entries;
  for (int64_t i = 0; i < n_caches; ++i) {
    const CompactCache& c = caches[i];
    if (c.row_bytes == 0 || compact_chunkable(c, chunk_bytes)) continue;
    SlicedCache e{c.base, c.stride_b, c.stride_h, c.stride_c, c.capacity, 0, 1, 1, 1};
    e.vec_bytes = compact_vec_bytes(c);
    e.row_units = c.row_bytes / e.vec_bytes;
    e.slice_units = std::max(1, slice_bytes / e.vec_bytes);
    e.slices = static_cast<int>((e.row_units + e.slice_units - 1) / e.slice_units);
    entries.push_back(e);
  }
  for (size_t first = 0; first < entries.size(); first += kMaxCachesPerLaunch) {
    const size_t n = std::min<size_t>(kMaxCachesPerLaunch, entries.size() - first);
    CompactBatch batch{};
    std::copy(entries.begin() + first, entries.begin() + first + n, batch.caches);
    int max_slices = 1;
    for (size_t i = 0; i < n; ++i) max_slices = std::max(max_slices, batch.caches[i].slices);
    const int nn = static_cast<int>(n);
    const cudaError_t err =
        stages >= 2 ? launch_mode<2>(batch, nn, indices, B, H, K, max_slices, stages, stages * tile_bytes, stream)
        : pipelined ? launch_mode<1>(batch, nn, indices, B, H, K, max_slices, 0, 0, stream)
                                  : launch_mode<0>(batch, nn, indices, B, H, K, max_slices, 0, 0, stream);
    if (err) return err;
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace triattention
