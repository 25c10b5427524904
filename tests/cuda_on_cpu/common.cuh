// SPDX-License-Identifier: Apache-2.0
// A CPU stand-in for kernel_src/triattention_cuda/common.cuh, so tests/test_cuda_host.py can run a kernel file on a
// machine without a GPU: each block's kThreads threads are std::threads meeting at a std::barrier for
// __syncthreads, blocks run one after another in launch order. It checks a kernel's index arithmetic and its
// results; not the GPU's memory model, cp.async (kHaveCpAsync is false: the register path) or concurrent blocks.
// The test copies the kernel file next to this header and rewrites its three CUDA-only forms (dynamic shared memory,
// a static __shared__ variable, the <<<>>> launch) into the shim:: calls below.
#pragma once

#include <cuda_runtime_api.h>  // cudaError_t, cudaStream_t: plain host declarations
#include <vector_types.h>      // uint4, dim3

#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstdlib>
#include <thread>
#include <vector>

#include "launch.h"

#undef __global__
#undef __device__
#undef __forceinline__
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace shim {
struct ThreadIdx {
  unsigned int x;
};
inline thread_local ThreadIdx thread_idx{0};
inline thread_local std::barrier<>* block_barrier = nullptr;
inline std::vector<unsigned char>& smem() {
  static std::vector<unsigned char> bytes;
  return bytes;
}
inline unsigned char* block_smem() { return smem().data(); }

// kernel<<<grid, block, smem_bytes, stream>>>(args...): blocks in order, each with `block` threads.
template <typename Kernel, typename... Args>
void launch(Kernel kernel, unsigned int grid, int block, int smem_bytes, cudaStream_t, Args... args) {
  smem().assign(static_cast<size_t>(smem_bytes) + 64, 0xA5);  // garbage, as on a GPU
  for (unsigned int b = 0; b < grid; ++b) {
    std::barrier<> barrier(block);
    std::vector<std::thread> threads;
    for (int t = 0; t < block; ++t) {
      threads.emplace_back([&, t] {
        thread_idx.x = static_cast<unsigned int>(t);
        block_barrier = &barrier;
        kernel(args...);
      });
    }
    for (auto& th : threads) th.join();
  }
}
}  // namespace shim

#define threadIdx (::shim::thread_idx)
inline void __syncthreads() { shim::block_barrier->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __nanosleep(unsigned int) { std::this_thread::yield(); }
[[noreturn]] inline void __trap() { std::abort(); }
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }

namespace triattention {
namespace cuda {
constexpr int kThreads = 256;
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
constexpr bool kHaveCpAsync = false;
template <typename raw_t>
inline void cp_async(raw_t*, const void*, bool) { std::abort(); }  // never reached: kHaveCpAsync is false
inline void cp_async_commit() {}
template <int kPending>
inline void cp_async_wait() {}
inline cudaError_t launched() { return cudaSuccess; }
template <typename Kernel>
inline cudaError_t allow_dynamic_smem(Kernel, int64_t) { return cudaSuccess; }
}  // namespace cuda
}  // namespace triattention
