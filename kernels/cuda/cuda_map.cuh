/* cuda_map.cuh - one launcher for every per-element op of the CUDA backend.
 *
 * cuda_map(o, "op", n, f) runs the device lambda f(i) for i in [0, n) with a
 * grid-stride loop on the backend's stream and checks the launch. The
 * per-element ops (fill, axpy, GELU, AdamW, ...) are one line each on top of
 * it, with their formulas from the shared elementwise.h. */
#ifndef NAWAL_CUDA_MAP_CUH
#define NAWAL_CUDA_MAP_CUH

#include "cuda_common.h"

template <typename F>
__global__ void cuda_map_kernel(size_t n, F f) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) f(i);
}

template <typename F>
static void cuda_map(const nawal_ops *o, const char *op, size_t n, F f) {
    if (!n) return;
    cuda_map_kernel<<<cuda_blocks(n, 256), 256, 0, CUDA_STATE(o)->stream>>>(n, f);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) cuda_fatal(op, "launch of cuda_map_kernel", cudaGetErrorString(e), __FILE__, __LINE__);
}

#endif
