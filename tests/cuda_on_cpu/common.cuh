// SPDX-License-Identifier: Apache-2.0
// A CPU stand-in for kernel_src/triattention_cuda/common.cuh, so tests/test_cuda_host.py can run the compact_ kernel
// files on a machine without a GPU: each block's threads are std::threads meeting at a std::barrier for
// __syncthreads, blocks run one after another in launch order (x fastest, then y). It checks the kernels' index
// arithmetic and results; not the GPU's memory model, cp.async (kHaveCpAsync is false: the register paths), warp
// shuffles (none here) or concurrent blocks. The test copies the kernel files next to this header and rewrites their
// CUDA-only forms (dynamic shared memory, a static __shared__ variable, the <<<>>> launch) into the shim:: calls.
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
inline thread_local dim3 thread_idx{0, 0, 0};
inline thread_local dim3 block_idx{0, 0, 0};
inline thread_local std::barrier<>* block_barrier = nullptr;
inline std::vector<unsigned char>& smem() {
  static std::vector<unsigned char> bytes;
  return bytes;
}
inline unsigned char* block_smem() { return smem().data(); }

// kernel<<<grid, block, smem_bytes, stream>>>(args...): blocks in order, each with `block` threads.
template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, int block, int64_t smem_bytes, cudaStream_t, Args... args) {
  smem().assign(static_cast<size_t>(smem_bytes) + 64, 0xA5);  // garbage, as on a GPU
  std::barrier<> barrier(block);
  std::vector<std::thread> threads;  // one thread per block thread, walking the blocks together
  for (int t = 0; t < block; ++t) {
    threads.emplace_back([&, t] {
      thread_idx = dim3(static_cast<unsigned int>(t), 0, 0);
      block_barrier = &barrier;
      for (unsigned int y = 0; y < grid.y; ++y) {
        for (unsigned int x = 0; x < grid.x; ++x) {
          block_idx = dim3(x, y, 0);
          kernel(args...);
          barrier.arrive_and_wait();  // the block is done before the next one starts (shared memory is reused)
        }
      }
    });
  }
  for (auto& th : threads) th.join();
}
}  // namespace shim

#define threadIdx (::shim::thread_idx)
#define blockIdx (::shim::block_idx)
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
inline void cp_async_wait_pending(int) { std::abort(); }
inline cudaError_t launched() { return cudaSuccess; }
template <typename Kernel>
inline cudaError_t allow_dynamic_smem(Kernel, int64_t) { return cudaSuccess; }
}  // namespace cuda
}  // namespace triattention
