/* vector.cu - CUDA vector basics: fill, copy, axpy, scale, the deterministic
 * sum of squares (gradient norm) and the deterministic column sums that
 * matmul's bias gradient and layernorm's parameter gradients use.
 *
 * Reductions never use atomics: fixed partitions write partials, which one
 * block then adds in a fixed order, so results repeat bit for bit. */
#include "cuda_map.cuh"
#include "cuda_reduce.cuh"

void cuda_fill(const nawal_ops *o, float *x, float value, size_t n) {
    cuda_map(o, "fill", n, [=] __device__(size_t i) { x[i] = value; });
}

void cuda_copy(const nawal_ops *o, float *dst, const float *src, size_t n) {
    if (!n || dst == src) return;
    CUDA_CHECK("copy", cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, CUDA_STATE(o)->stream));
}

void cuda_axpy(const nawal_ops *o, float *y, float a, const float *x, size_t n) {
    cuda_map(o, "axpy", n, [=] __device__(size_t i) { y[i] += a * x[i]; });
}

void cuda_scale(const nawal_ops *o, float *x, float a, size_t n) {
    cuda_map(o, "scale", n, [=] __device__(size_t i) { x[i] *= a; });
}

/* ---- sum of squares: SUMSQ_BLOCKS grid-stride partials in double, then one block ---- */
#define SUMSQ_BLOCKS 1024
#define SUMSQ_THREADS 256

__global__ static void sumsq_partial_kernel(double *part, const float *x, size_t n) {
    double s = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double v = x[i];
        s += v * v;
    }
    s = block_sum_double(s);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

__global__ static void sum_partials_kernel(double *out, const double *part, int n) {
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += part[i];
    s = block_sum_double(s);
    if (threadIdx.x == 0) *out = s;
}

double cuda_sumsq(const nawal_ops *o, const float *x, size_t n) {
    cuda_state *s = CUDA_STATE(o);
    if (!n) return 0.0;
    double *part = (double *)cuda_scratch(o, (SUMSQ_BLOCKS + 1) * sizeof(double));
    sumsq_partial_kernel<<<SUMSQ_BLOCKS, SUMSQ_THREADS, 0, s->stream>>>(part, x, n);
    LAUNCH_CHECK("sumsq", "sumsq_partial_kernel");
    sum_partials_kernel<<<1, 1024, 0, s->stream>>>(part + SUMSQ_BLOCKS, part, SUMSQ_BLOCKS);
    LAUNCH_CHECK("sumsq", "sum_partials_kernel");
    CUDA_CHECK("sumsq", cudaMemcpyAsync(s->host_result, part + SUMSQ_BLOCKS, sizeof(double), cudaMemcpyDeviceToHost, s->stream));
    CUDA_CHECK("sumsq", cudaStreamSynchronize(s->stream));
    return *s->host_result;
}

/* ---- column sums: block (32 columns x 8 row lanes) per (column tile, row chunk) ---- */
#define COLSUM_ROWS 128 /* rows per chunk */

/* part[chunk][C] (and part_w[chunk][C]) for rows [chunk*COLSUM_ROWS, ...);
 * threads (tx, ty): column c0+tx, rows ty, ty+8, ... of the chunk, then the 8
 * row lanes are added in order through shared memory */
__global__ static void colsum_partial_kernel(float *part, float *part_w, const float *dout, const float *inp,
                                             const float *mean, const float *rstd, int N, int C) {
    __shared__ float sh[2][8][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    int r0 = blockIdx.y * COLSUM_ROWS, r1 = min(r0 + COLSUM_ROWS, N);
    float s = 0.0f, sw = 0.0f;
    if (c < C) {
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            float d = dout[(size_t)r * C + c];
            s += d;
            if (inp) sw += d * (inp[(size_t)r * C + c] - mean[r]) * rstd[r];
        }
    }
    sh[0][threadIdx.y][threadIdx.x] = s;
    sh[1][threadIdx.y][threadIdx.x] = sw;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float a = 0.0f, aw = 0.0f;
        for (int k = 0; k < 8; k++) { a += sh[0][k][threadIdx.x]; aw += sh[1][k][threadIdx.x]; }
        part[(size_t)blockIdx.y * C + c] = a;
        if (inp) part_w[(size_t)blockIdx.y * C + c] = aw;
    }
}

__global__ static void colsum_final_kernel(float *out, float *out_w, const float *part, const float *part_w,
                                           int nchunk, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float a = 0.0f, aw = 0.0f;
    for (int k = 0; k < nchunk; k++) {
        a += part[(size_t)k * C + c];
        if (part_w) aw += part_w[(size_t)k * C + c];
    }
    out[c] += a;
    if (part_w) out_w[c] += aw;
}

void cuda_colsum(const nawal_ops *o, const char *op, float *out, float *out_w, const float *dout,
                 const float *inp, const float *mean, const float *rstd, int N, int C) {
    if (N <= 0 || C <= 0) return;
    cuda_state *s = CUDA_STATE(o);
    int nchunk = (N + COLSUM_ROWS - 1) / COLSUM_ROWS;
    size_t per = (size_t)nchunk * C;
    float *part = (float *)cuda_scratch(o, 2 * per * sizeof(float));
    float *part_w = inp ? part + per : NULL;
    dim3 grid((C + 31) / 32, nchunk), block(32, 8);
    colsum_partial_kernel<<<grid, block, 0, s->stream>>>(part, part_w, dout, inp, mean, rstd, N, C);
    LAUNCH_CHECK(op, "colsum_partial_kernel");
    colsum_final_kernel<<<(C + 255) / 256, 256, 0, s->stream>>>(out, out_w, part, part_w, nchunk, C);
    LAUNCH_CHECK(op, "colsum_final_kernel");
}
