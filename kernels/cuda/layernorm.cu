/* layernorm.cu - CUDA layer normalisation forward/backward (eps 1e-5).
 * One warp per row for the normalisation and the input gradient; the weight
 * and bias gradients are deterministic column sums (vector.cu). */
#include "cuda_common.h"
#include "cuda_reduce.cuh"

#define LN_EPS 1e-5f

/* two passes over the row (mean, then centred variance) as the CPU does */
__global__ static void layernorm_fwd_kernel(float *out, float *mean, float *rstd, const float *inp,
                                            const float *w, const float *b, int N, int C) {
    int n = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const float *x = inp + (size_t)n * C;
    float *y = out + (size_t)n * C;
    float m = 0.0f;
    for (int i = lane; i < C; i += 32) m += x[i];
    m = warp_sum(m) / C;
    float v = 0.0f;
    for (int i = lane; i < C; i += 32) { float d = x[i] - m; v += d * d; }
    v = warp_sum(v) / C;
    float s = 1.0f / sqrtf(v + LN_EPS);
    for (int i = lane; i < C; i += 32) y[i] = (x[i] - m) * s * w[i] + b[i];
    if (lane == 0) { mean[n] = m; rstd[n] = s; }
}

__global__ static void layernorm_bwd_kernel(float *dinp, const float *dout, const float *inp, const float *w,
                                            const float *mean, const float *rstd, int N, int C) {
    int n = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
    float *dx = dinp + (size_t)n * C;
    float m = mean[n], s = rstd[n];
    float sum_dn = 0.0f, sum_dn_xh = 0.0f;
    for (int i = lane; i < C; i += 32) {
        float xh = (x[i] - m) * s, dn = dy[i] * w[i];
        sum_dn += dn;
        sum_dn_xh += dn * xh;
    }
    sum_dn = warp_sum(sum_dn) / C;
    sum_dn_xh = warp_sum(sum_dn_xh) / C;
    for (int i = lane; i < C; i += 32) {
        float xh = (x[i] - m) * s;
        dx[i] += s * (dy[i] * w[i] - sum_dn - xh * sum_dn_xh);
    }
}

void cuda_layernorm_fwd(const nawal_ops *o, float *out, float *mean, float *rstd,
                        const float *inp, const float *w, const float *b, int N, int C) {
    if (N <= 0) return;
    layernorm_fwd_kernel<<<(N + 7) / 8, 256, 0, CUDA_STATE(o)->stream>>>(out, mean, rstd, inp, w, b, N, C);
    LAUNCH_CHECK("layernorm_fwd", "layernorm_fwd_kernel");
}

void cuda_layernorm_bwd(const nawal_ops *o, float *dinp, float *dw, float *db,
                        const float *dout, const float *inp, const float *w,
                        const float *mean, const float *rstd, int N, int C) {
    if (N <= 0) return;
    if (dinp) {
        layernorm_bwd_kernel<<<(N + 7) / 8, 256, 0, CUDA_STATE(o)->stream>>>(dinp, dout, inp, w, mean, rstd, N, C);
        LAUNCH_CHECK("layernorm_bwd", "layernorm_bwd_kernel");
    }
    if (dw || db) cuda_colsum(o, "layernorm_bwd", db, dw, dout, inp, mean, rstd, N, C);
}
