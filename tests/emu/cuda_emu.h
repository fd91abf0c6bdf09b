/* cuda_emu.h - just enough of CUDA's execution model to run a plain kernel
 * on the CPU, so kernels written without a GPU at hand are tested where the
 * code is written (tests/emu/test_*_emu.cpp; the GPU itself is still the
 * judge, tests/gpu/).
 *
 * Every CUDA thread of a block is a host thread; __syncthreads is a barrier
 * over the block's threads, so a barrier not reached by all of them hangs
 * the test (ctest's timeout reports it) instead of passing by luck. Blocks
 * run one after another; dynamic shared memory is a fresh buffer of exactly
 * the launch's size per block (16-byte aligned, poisoned with NaN), so an
 * overrun shows under ASan. float4 is a 16-byte aligned struct, as CUDA's. What it lacks: warps (no shuffles,
 * votes or warp-synchronous code), atomics, streams, timing. Include it
 * before the kernels' header. */
#ifndef NAWAL_CUDA_EMU_H
#define NAWAL_CUDA_EMU_H

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <pthread.h>
#include <thread>
#include <vector>

struct emu_dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline thread_local emu_dim3 threadIdx, blockIdx;
inline emu_dim3 blockDim, gridDim;
inline pthread_barrier_t emu_barrier;
inline float *emu_shared_mem; /* this block's dynamic shared memory, exactly its size (ASan sees overruns) */

struct alignas(16) float4 {
    float x, y, z, w;
};

inline void __syncthreads() { pthread_barrier_wait(&emu_barrier); }

#define __global__
#define __device__
#define __launch_bounds__(n)
#define FA_SHARED(name) float *name = emu_shared_mem
using std::max;
using std::min;

/* runs kernel() as a grid.x x grid.y grid of `threads`-thread blocks with
 * smem_bytes of dynamic shared memory */
template <class F> void emu_launch(unsigned gx, unsigned gy, unsigned threads, size_t smem_bytes, F kernel) {
    blockDim = emu_dim3{ threads, 1, 1 };
    gridDim = emu_dim3{ gx, gy, 1 };
    for (unsigned by = 0; by < gy; by++)
        for (unsigned bx = 0; bx < gx; bx++) {
            size_t nf = (smem_bytes + sizeof(float) - 1) / sizeof(float);
            emu_shared_mem = static_cast<float *>(aligned_alloc(16, (nf * sizeof(float) + 15) / 16 * 16));
            if (!emu_shared_mem) abort();
            std::fill(emu_shared_mem, emu_shared_mem + nf, NAN);
            pthread_barrier_init(&emu_barrier, nullptr, threads);
            std::vector<std::thread> ts;
            for (unsigned t = 0; t < threads; t++)
                ts.emplace_back([=] {
                    threadIdx = emu_dim3{ t, 0, 0 };
                    blockIdx = emu_dim3{ bx, by, 0 };
                    kernel();
                });
            for (auto &th : ts) th.join();
            pthread_barrier_destroy(&emu_barrier);
            free(emu_shared_mem);
            emu_shared_mem = nullptr;
        }
}

#endif
