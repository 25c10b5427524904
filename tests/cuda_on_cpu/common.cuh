// SPDX-License-Identifier: Apache-2.0
// A CPU stand-in for kernel_src/triattention_cuda/common.cuh, so tests/test_cuda_host.py can run the kernel files
// of every op on a machine without a GPU (block_reduce.cuh and key_types.cuh, included at the end, are the real
// ones). It checks the kernels' index arithmetic, results and cross-block protocols; not the GPU's (weaker) memory
// model or timing.
// - Blocks: SHIM_RESIDENT blocks run at once (default 3), each a group of std::threads meeting at a std::barrier for
//   __syncthreads, with its own shared memory; the groups take block indices in order from one counter, as a GPU
//   dispatches them, so a block may spin on another as it would there.
// - Warp shuffles: the 32 lanes of a warp exchange through a buffer between two warp barriers (the kernels shuffle
//   with every lane, as they must on a GPU).
// - cp.async (SHIM_CP_ASYNC=1, the default): a copy is only recorded when issued and is done when a
//   cp.async.wait_group lets it finish, the latest a GPU may do it. A slot read before its wait holds garbage, and a
//   source overwritten between issue and wait is read overwritten: both show up as wrong results. SHIM_CP_ASYNC=0
//   takes the register paths of sm_75 and ROCm.
// The test copies the kernel files next to this header and rewrites their CUDA-only forms (dynamic shared memory,
// a static __shared__ variable, the <<<>>> launch, one PTX instruction) into the shim:: calls below.
#pragma once

#include <cuda_fp16.h>         // __half2float and friends have host versions
#include <cuda_runtime_api.h>  // cudaError_t, cudaStream_t: plain host declarations
#include <vector_types.h>      // uint2, uint4, dim3

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "../triattention_math.h"
#include "launch.h"

#ifndef SHIM_CP_ASYNC
#define SHIM_CP_ASYNC 1
#endif
#ifndef SHIM_RESIDENT
#define SHIM_RESIDENT 3
#endif

#undef __global__
#undef __device__
#undef __forceinline__
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace shim {
constexpr int kWarp = 32;

struct Warp {  // one warp's exchange buffer for shuffles
  std::barrier<> barrier{kWarp};
  uint64_t slot[kWarp];
};

struct Copy {  // a recorded cp.async
  void* dst;
  const void* src;
  size_t bytes;
  bool valid;
};

inline thread_local dim3 thread_idx{0, 0, 0};
inline thread_local dim3 block_idx{0, 0, 0};
inline thread_local dim3 block_dim{1, 1, 1};
inline thread_local dim3 grid_dim{1, 1, 1};
inline thread_local std::barrier<>* block_barrier = nullptr;
inline thread_local Warp* warp = nullptr;
inline thread_local std::vector<Copy> open_group;
inline thread_local std::vector<std::vector<Copy>> committed;
inline thread_local unsigned char* dynamic_smem = nullptr;  // this block's extern __shared__ bytes
inline thread_local unsigned char* static_smem = nullptr;   // and its __shared__ variables, in declaration order
inline thread_local size_t static_used = 0;

inline unsigned char* block_smem() { return dynamic_smem; }
// A __shared__ variable: the next slot of the block's static area. Every thread of a block declares the kernel's
// variables in the same order, so they all get the same slots.
template <typename T>
T& block_static() {
  static_used = (static_used + 15) / 16 * 16;
  T* slot = reinterpret_cast<T*>(static_smem + static_used);
  static_used += sizeof(T);
  if (static_used > 48 * 1024) std::abort();  // a GPU's static shared memory limit
  return *slot;
}

inline float sqrt_approx(float x) { return std::sqrt(x); }  // sqrt.approx.f32 (a few ulp off on a GPU)

// One resident block: its barrier, warps and shared memory.
struct Resident {
  explicit Resident(int threads, int64_t smem_bytes)
      : barrier(threads), dynamic(static_cast<size_t>(smem_bytes) + 64, 0xA5), statics(48 * 1024 + 64, 0xA5) {
    for (int w = 0; w < (threads + kWarp - 1) / kWarp; ++w) warps.push_back(std::make_unique<Warp>());
  }
  std::barrier<> barrier;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<unsigned char> dynamic, statics;  // filled with garbage, as on a GPU
  unsigned int current = 0;
};

// kernel<<<grid, block, smem_bytes, stream>>>(args...): SHIM_RESIDENT blocks at a time, indices in order.
template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, int block, int64_t smem_bytes, cudaStream_t, Args... args) {
  const unsigned int total = grid.x * grid.y;
  std::atomic<unsigned int> next{0};
  std::vector<std::unique_ptr<Resident>> residents;
  for (int r = 0; r < SHIM_RESIDENT; ++r) residents.push_back(std::make_unique<Resident>(block, smem_bytes));
  std::vector<std::thread> threads;
  for (int r = 0; r < SHIM_RESIDENT; ++r) {
    for (int t = 0; t < block; ++t) {
      threads.emplace_back([&, r, t] {
        Resident& res = *residents[r];
        thread_idx = dim3(static_cast<unsigned int>(t), 0, 0);
        block_dim = dim3(static_cast<unsigned int>(block), 1, 1);
        grid_dim = grid;
        block_barrier = &res.barrier;
        warp = res.warps[t / kWarp].get();
        dynamic_smem = res.dynamic.data();
        static_smem = res.statics.data();
        for (;;) {
          if (t == 0) res.current = next.fetch_add(1);
          res.barrier.arrive_and_wait();
          const unsigned int b = res.current;
          if (b >= total) break;  // every thread of the block read the same index
          block_idx = dim3(b % grid.x, b / grid.x, 0);
          static_used = 0;
          kernel(args...);
          if (!open_group.empty() || !committed.empty()) std::abort();  // a copy left in flight at block end
          res.barrier.arrive_and_wait();  // the block is done before its threads take the next one
        }
      });
    }
  }
  for (auto& th : threads) th.join();
}

inline void finish_copies(size_t pending) {
  if (committed.size() > pending) std::this_thread::yield();  // let other blocks run in between: wider race windows
  while (committed.size() > pending) {
    for (const Copy& c : committed.front()) {
      if (c.valid) {
        std::memcpy(c.dst, c.src, c.bytes);
      } else {
        std::memset(c.dst, 0, c.bytes);
      }
    }
    committed.erase(committed.begin());
  }
}
}  // namespace shim

#define threadIdx (::shim::thread_idx)
#define blockIdx (::shim::block_idx)
#define blockDim (::shim::block_dim)
#define gridDim (::shim::grid_dim)
using std::max;  // CUDA's global min/max of two numbers
using std::min;
inline void __syncthreads() { shim::block_barrier->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __nanosleep(unsigned int) { std::this_thread::yield(); }
[[noreturn]] inline void __trap() { std::abort(); }
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
inline float __uint_as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
template <typename Kernel>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel, int, size_t) {
  *blocks = 2;  // what ptxas's register counts give the fast paths on sm_90
  return cudaSuccess;
}

namespace triattention {
namespace cuda {
namespace tmath = triattention::math;

constexpr int kThreads = 256;
constexpr int kLaneGroup = 32;
constexpr bool kHaveCpAsync = SHIM_CP_ASYNC != 0;

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Every lane of the warp publishes v, then takes lane `src`'s (its own when src is outside its group of `width`).
template <typename T>
T warp_exchange(T v, int src, int width) {
  static_assert(sizeof(T) <= 8, "shuffled values fit a slot");
  const int lane = static_cast<int>(threadIdx.x) % shim::kWarp, group = lane / width * width;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  shim::warp->slot[lane] = bits;
  shim::warp->barrier.arrive_and_wait();
  bits = shim::warp->slot[src >= group && src < group + width ? src : lane];
  shim::warp->barrier.arrive_and_wait();
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}
template <typename T>
T shfl_xor(T v, int lane_mask, int width) {
  const int lane = static_cast<int>(threadIdx.x) % shim::kWarp, group = lane / width * width;
  return warp_exchange(v, group + ((lane - group) ^ lane_mask), width);
}
template <typename T>
T shfl_up(T v, unsigned int delta, int width) {
  const int lane = static_cast<int>(threadIdx.x) % shim::kWarp;  // lanes below delta in their group keep theirs
  return warp_exchange(v, lane % width >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : lane, width);
}

template <typename raw_t>
inline void cp_async(raw_t* dst, const void* src, bool valid) {
  shim::open_group.push_back({dst, src, sizeof(raw_t), valid});
}
inline void cp_async_commit() {
  shim::committed.push_back(std::move(shim::open_group));
  shim::open_group.clear();
}
template <int kPending>
inline void cp_async_wait() {
  shim::finish_copies(kPending);
}
inline void cp_async_wait_pending(int pending) { shim::finish_copies(static_cast<size_t>(pending)); }

inline cudaError_t launched() { return cudaSuccess; }
template <typename Kernel>
inline cudaError_t allow_dynamic_smem(Kernel, int64_t) {
  return cudaSuccess;
}
}  // namespace cuda
}  // namespace triattention

#include "block_reduce.cuh"  // the real group and block reductions, on the shuffles and barriers above
#include "key_types.cuh"     // the real key element types and conversions
