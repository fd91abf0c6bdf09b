/* cuda_reduce.cuh - the warp and block reductions the CUDA kernels share.
 *
 * All of them combine values in a fixed order (a butterfly across the warp,
 * a halving tree across the block), never with atomics, so a kernel built
 * on them gives the same bits on every run. warp_sum/warp_max need all 32
 * lanes of the warp to call them; block_sum_double needs every thread of
 * the block to call it, with a power-of-two block of at most 1024 threads. */
#ifndef NAWAL_CUDA_REDUCE_CUH
#define NAWAL_CUDA_REDUCE_CUH

/* every lane gets the sum (resp. max) of v over the warp */
static __device__ __forceinline__ float warp_sum(float v) {
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}
static __device__ __forceinline__ float warp_max(float v) {
    for (int off = 16; off > 0; off /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

/* every thread gets the sum of v over the block (1-, 2- or 3-D, threads in
 * linear order), added by a fixed halving tree through shared memory */
static __device__ __forceinline__ double block_sum_double(double v) {
    __shared__ double sh[1024];
    unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned nt = blockDim.x * blockDim.y * blockDim.z;
    sh[tid] = v;
    __syncthreads();
    for (unsigned w = nt / 2; w > 0; w /= 2) {
        if (tid < w) sh[tid] += sh[tid + w];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

#endif
