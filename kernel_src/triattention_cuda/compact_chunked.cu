// SPDX-License-Identifier: Apache-2.0
// compact_ (kernel_src/OPS.md, op 4), chunked (TRIATTENTION_CUDA_TUNE compact_chunk=BYTES): each block moves one
// chunk of consecutive whole destination rows of one (cache, b, h). Its reads and writes are runs of whole rows (the
// column slices of compact.cu read each row in pieces, at different times, from different blocks), and the block
// count follows the bytes instead of B * H * slices.
//
// Why it is safe across blocks. A chunk reads rows indices[j] >= j >= its own first row: rows of its own chunk or of
// later chunks of the same (cache, b, h), never of earlier ones. So the one hazard is a chunk storing rows that an
// earlier chunk has not read yet. Each block therefore (1) loads all its sources into shared memory and waits until
// they have landed, (2) raises its "reads done" flag, (3) waits for the flags of every earlier chunk of its
// (cache, b, h) (all of them: the contract does not promise sorted indices, so any earlier chunk may read any later
// row), (4) stores. Within the block, (1) completes before any of its stores, as in compact.cu.
// Why every wait ends. Blocks take chunks from a ticket counter, and a row set's chunks have consecutive tickets,
// first chunk first: an earlier chunk is held by a block that is running or done, and (1)-(2) wait on nothing.
#include "common.cuh"

#include <algorithm>
#include <vector>

namespace triattention {
namespace cuda {
namespace {

constexpr int kMaxChunkedCaches = 32;  // per launch (kernel parameter space)
constexpr int kUnit = 16;              // bytes per load/store
constexpr int kMaxUnitsPerThread = 65536 / kUnit / kThreads;  // tuning.h caps a chunk at 64 KB
static_assert(kMaxUnitsPerThread <= 32, "one bit per unit in a 32-bit mask");
constexpr int units_per_thread(int chunk_bytes) { return chunk_bytes / kUnit / kThreads; }
// A wait this long means a broken invariant, not a slow neighbour (a chunk's reads take microseconds): stop the
// kernel with an error rather than hang the process.
constexpr int kMaxSpins = 1 << 24;

struct ChunkedCache {
  char* base;
  int64_t stride_b, stride_h, stride_c;  // bytes
  int64_t capacity;                      // C
  int64_t row_units;                     // 16-byte units per row
  int64_t chunk_rows;                    // rows per chunk
  int64_t chunks;                        // chunks per (b, h): ceil(K / chunk_rows)
  int64_t first_ticket;                  // this cache's first chunk in the launch
};

struct ChunkedBatch {
  ChunkedCache caches[kMaxChunkedCaches];
  int n;
};

__device__ __forceinline__ void backoff() {
#ifdef TRIATT_ROCM
  __builtin_amdgcn_s_sleep(2);
#else
  __nanosleep(128);
#endif
}

__device__ __forceinline__ void wait_flag(const int* flag) {
  for (int spins = 0; *reinterpret_cast<const volatile int*>(flag) == 0; ++spins) {
    if (spins == kMaxSpins) {
#ifdef TRIATT_ROCM
      __builtin_trap();
#else
      __trap();
#endif
    }
    backoff();
  }
  __threadfence();  // what the flag's block did before raising it is ordered before this thread's stores
}

// kUnits: 16-byte units per thread, chunk_bytes / 4096 (a template so small chunks need few registers: 78 at 16,
// sm_90).
template <int kUnits>
__global__ void __launch_bounds__(kThreads)
    compact_chunked_kernel(ChunkedBatch batch, const int64_t* __restrict__ indices,  // [B, H, K]
                           int64_t H, int64_t K, unsigned int* __restrict__ counter, int* __restrict__ flags) {
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  uint4* slots = reinterpret_cast<uint4*>(smem_bytes);  // unit u of the chunk in slots[u]
  __shared__ int64_t ticket_s;
  if (threadIdx.x == 0) ticket_s = atomicAdd(counter, 1u);
  __syncthreads();
  const int64_t ticket = ticket_s;
  int which = 0;
  while (which + 1 < batch.n && ticket >= batch.caches[which + 1].first_ticket) ++which;
  const ChunkedCache& c = batch.caches[which];
  const int64_t local = ticket - c.first_ticket;
  const int64_t rowset = local / c.chunks, chunk = local % c.chunks;
  const int64_t* idx = indices + rowset * K;
  char* base = c.base + (rowset / H) * c.stride_b + (rowset % H) * c.stride_h;
  const int j0 = static_cast<int>(chunk * c.chunk_rows);  // rows and sources are int from here: C < 2^31
  const int capacity = static_cast<int>(c.capacity);
  // This thread's units are threadIdx.x + u * kThreads, u < kUnits, of the chunk's units (<= 4096: a chunk is
  // <= 64 KB); unit -> (row, column) is stepped without a division per unit.
  const int row_units = static_cast<int>(c.row_units);
  const int units = static_cast<int>(min64(c.chunk_rows, K - j0)) * row_units;
  const int step_rows = kThreads / row_units, step_cols = kThreads % row_units;
  const int row0 = static_cast<int>(threadIdx.x) / row_units, col0 = static_cast<int>(threadIdx.x) % row_units;
  auto advance = [&](int& row, int& col) {
    row += step_rows;
    col += step_cols;
    if (col >= row_units) {
      col -= row_units;
      ++row;
    }
  };

  // (1) Sources into shared memory: all index loads first (independent, in flight together), then the copies.
  // Consecutive threads take consecutive 16-byte units of a row (coalesced).
  int src[kUnits];  // int: the host takes only caches of C < 2^31 here
  {
    int row = row0, col = col0;
#pragma unroll
    for (int u = 0; u < kUnits; ++u) {
      const int64_t v = static_cast<int>(threadIdx.x) + u * kThreads < units ? idx[j0 + row] : -1;
      src[u] = v >= 0 && v < capacity ? static_cast<int>(v) : -1;
      advance(row, col);
    }
  }
  uint32_t moving = 0;  // bit u: unit u of this thread moves
  {
    int row = row0, col = col0;
#pragma unroll
    for (int u = 0; u < kUnits; ++u) {
      // identity row, no unit, or outside the contract (src < j or >= C): nothing to move
      if (src[u] > j0 + row) {
        moving |= 1u << u;
        uint4* slot = slots + threadIdx.x + u * kThreads;
        const char* from = base + static_cast<int64_t>(src[u]) * c.stride_c + col * kUnit;
        if constexpr (kHaveCpAsync) {
          cp_async(slot, from, true);
        } else {
          *slot = *reinterpret_cast<const uint4*>(from);  // the shared store needs the load's data: it landed
        }
      }
      advance(row, col);
    }
  }
  if constexpr (kHaveCpAsync) {
    cp_async_commit();
    cp_async_wait<0>();
  }
  __syncthreads();  // every source of the chunk is in shared memory: its rows may be overwritten from here on

  // (2) Reads done.
  if (threadIdx.x == 0) {
    __threadfence();
    atomicExch(flags + ticket, 1);
  }
  // (3) Every earlier chunk of this (cache, b, h) has read its sources, some of which may be this chunk's rows.
  for (int64_t q = ticket - chunk + threadIdx.x; q < ticket; q += kThreads) wait_flag(flags + q);
  __syncthreads();

  // (4) Stores, each thread from its own slots.
  int row = row0, col = col0;
#pragma unroll
  for (int u = 0; u < kUnits; ++u) {
    if ((moving >> u) & 1u)
      *reinterpret_cast<uint4*>(base + static_cast<int64_t>(j0 + row) * c.stride_c + col * kUnit) =
          slots[threadIdx.x + u * kThreads];
    advance(row, col);
  }
}

int64_t chunk_rows(const CompactCache& c, int chunk_bytes) { return chunk_bytes / c.row_bytes; }

// The launches of the chunked caches: up to kMaxChunkedCaches each, with their ticket counts (one flag each).
std::vector<std::pair<ChunkedBatch, int64_t>> plan_launches(const CompactCache* caches, int64_t n_caches, int64_t B,
                                                            int64_t H, int64_t K, int chunk_bytes) {
  std::vector<std::pair<ChunkedBatch, int64_t>> launches;
  if (B * H * K == 0) return launches;
  for (int64_t i = 0; i < n_caches; ++i) {
    const CompactCache& c = caches[i];
    if (!compact_chunkable(c, chunk_bytes)) continue;
    if (launches.empty() || launches.back().first.n == kMaxChunkedCaches) launches.push_back({ChunkedBatch{}, 0});
    auto& [batch, tickets] = launches.back();
    const int64_t rows = chunk_rows(c, chunk_bytes);
    batch.caches[batch.n++] = {c.base, c.stride_b, c.stride_h, c.stride_c, c.capacity, c.row_bytes / kUnit, rows,
                               (K + rows - 1) / rows, tickets};
    tickets += B * H * batch.caches[batch.n - 1].chunks;
  }
  return launches;
}

}  // namespace

bool compact_chunkable(const CompactCache& c, int chunk_bytes) {
  return chunk_bytes > 0 && c.row_bytes > 0 && c.row_bytes <= chunk_bytes && c.capacity < (int64_t{1} << 31) &&
         compact_vec_bytes(c) == kUnit;
}

// Per launch: one ticket counter, then one flag per chunk.
int64_t compact_workspace_ints(const CompactCache* caches, int64_t n_caches, int64_t B, int64_t H, int64_t K,
                               int chunk_bytes) {
  int64_t total = 0;
  for (const auto& launch : plan_launches(caches, n_caches, B, H, K, chunk_bytes)) total += 1 + launch.second;
  return total;
}

cudaError_t launch_compact_chunked(const CompactCache* caches, int64_t n_caches, const int64_t* indices, int64_t B,
                                   int64_t H, int64_t K, int chunk_bytes, int* workspace, cudaStream_t stream) {
  const auto launches = plan_launches(caches, n_caches, B, H, K, chunk_bytes);
  if (launches.empty()) return cudaSuccess;  // chunk_bytes 0 (the column slices take every cache), or none fits
  if (workspace == nullptr) return cudaErrorInvalidValue;
  void (*kernel)(ChunkedBatch, const int64_t*, int64_t, int64_t, unsigned int*, int*) = nullptr;
  switch (units_per_thread(chunk_bytes)) {
    case 1: kernel = compact_chunked_kernel<1>; break;
    case 2: kernel = compact_chunked_kernel<2>; break;
    case 4: kernel = compact_chunked_kernel<4>; break;
    case 8: kernel = compact_chunked_kernel<8>; break;
    case 16: kernel = compact_chunked_kernel<16>; break;
    default: return cudaErrorInvalidValue;  // tuning.h admits powers of two in [4096, 65536] only
  }
  if (const cudaError_t err = allow_dynamic_smem(kernel, chunk_bytes)) return err;
  for (const auto& [batch, tickets] : launches) {
    auto* counter = reinterpret_cast<unsigned int*>(workspace);
    kernel<<<static_cast<unsigned int>(tickets), kThreads, chunk_bytes, stream>>>(
        batch, indices, H, K, counter, workspace + 1);
    if (const cudaError_t err = launched()) return err;
    workspace += 1 + tickets;
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace triattention
