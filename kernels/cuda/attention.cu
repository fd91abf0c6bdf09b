/* attention.cu - CUDA causal multi-head self-attention forward/backward.
 *
 * Per batch element, the four products (scale Q K^T, P V, and in the
 * backward dP = dY V^T, dV = P^T dY, dQ = dS K, dK = dS^T Q) are strided
 * batched GEMMs over the heads (cuBLAS, the backend's precision), reading
 * q, k, v straight out of qkv[B][T][3C] with leading dimension 3C. Between
 * them a warp-per-row kernel applies the causal softmax (forward) or its
 * backward, with the shared nawal_expf. att[B][NH][T][T] keeps the
 * probabilities with the upper triangle zero, as the CPU backend does.
 * Like the CPU path it computes the full T x T square; a fused causal
 * (flash-style) kernel is the next step. */
#include "cuda_common.h"
#include "elementwise.h"
#include <math.h>

/* C_cm (m x n) = op(A) op(B) per head; batch = NH; strides in floats */
static void gemm_heads(const nawal_ops *o, const char *op, int ta, int tb, int m, int n, int k, float alpha,
                       const float *A, int lda, long long sa, const float *B, int ldb, long long sb,
                       float *Cm, int ldc, long long sc, int NH) {
    cuda_state *s = CUDA_STATE(o);
    float beta = 0.0f;
    BLAS_CHECK(op, cublasGemmStridedBatchedEx(s->blas, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                              m, n, k, &alpha, A, CUDA_R_32F, lda, sa, B, CUDA_R_32F, ldb, sb,
                                              &beta, Cm, CUDA_R_32F, ldc, sc, NH, s->compute, CUBLAS_GEMM_DEFAULT));
}

__device__ static float warp_max(float v) {
    for (int off = 16; off > 0; off /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}
__device__ static float warp_sum(float v) {
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

/* rows = B*NH*T rows of length T; row r is query position t = r % T.
 * In place: scores (already scaled) -> causal softmax probabilities. */
__global__ static void causal_softmax_kernel(float *att, long long rows, int T) {
    long long r = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= rows) return;
    int t = (int)(r % T), n = t + 1;
    float *row = att + r * T;
    float mx = -INFINITY;
    for (int j = lane; j < n; j += 32) mx = fmaxf(mx, row[j]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j < n; j += 32) sum += nawal_expf(row[j] - mx);
    sum = warp_sum(sum);
    float inv = 1.0f / sum;
    for (int j = lane; j < n; j += 32) row[j] = nawal_expf(row[j] - mx) * inv;
    for (int j = n + lane; j < T; j += 32) row[j] = 0.0f;
}

/* In place on datt: dS = P (dP - rowsum(P dP)) * scale, zero above the diagonal */
__global__ static void causal_softmax_bwd_kernel(float *datt, const float *att, long long rows, int T, float scale) {
    long long r = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= rows) return;
    int t = (int)(r % T), n = t + 1;
    float *d = datt + r * T;
    const float *p = att + r * T;
    float dot = 0.0f;
    for (int j = lane; j < n; j += 32) dot += p[j] * d[j];
    dot = warp_sum(dot);
    for (int j = lane; j < n; j += 32) d[j] = p[j] * (d[j] - dot) * scale;
    for (int j = n + lane; j < T; j += 32) d[j] = 0.0f;
}

static void launch_rows(const nawal_ops *o, const char *op, long long rows, int T, float *a, const float *b, float scale, int bwd) {
    cuda_state *s = CUDA_STATE(o);
    const int warps = 8;
    long long blocks = (rows + warps - 1) / warps;
    if (blocks > 0x7fffffffLL) cuda_fatal(op, "launch", "too many attention rows", __FILE__, __LINE__);
    if (bwd) {
        causal_softmax_bwd_kernel<<<(unsigned)blocks, warps * 32, 0, s->stream>>>(a, b, rows, T, scale);
        LAUNCH_CHECK(op, "causal_softmax_bwd_kernel");
    } else {
        causal_softmax_kernel<<<(unsigned)blocks, warps * 32, 0, s->stream>>>(a, rows, T);
        LAUNCH_CHECK(op, "causal_softmax_kernel");
    }
}

/* Row-major X (r x c, ld) is column-major X^T (c x r, ld). Per head h of batch b:
 *   S^T (T_s x T_t) = K (T_s x hs) . Q^T        -> A = k (op T, ld 3C), B = q (op N, ld 3C)
 *   Y^T (hs x T)    = V^T (hs x T_s) . P^T      -> A = v (op N, ld 3C), B = att (op N, ld T) */
void cuda_attention_fwd(const nawal_ops *o, float *out, float *att, const float *qkv,
                        int B, int T, int C, int NH) {
    int hs = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    long long TT = (long long)T * T;
    for (int b = 0; b < B; b++) {
        const float *q = qkv + (size_t)b * T * C3, *k = q + C;
        float *p = att + (size_t)b * NH * TT;
        gemm_heads(o, "attention_fwd", 1, 0, T, T, hs, scale, k, C3, hs, q, C3, hs, p, T, TT, NH);
    }
    launch_rows(o, "attention_fwd", (long long)B * NH * T, T, att, NULL, 0.0f, 0);
    for (int b = 0; b < B; b++) {
        const float *v = qkv + (size_t)b * T * C3 + 2 * C;
        gemm_heads(o, "attention_fwd", 0, 0, hs, T, T, 1.0f, v, C3, hs, att + (size_t)b * NH * TT, T, TT,
                   out + (size_t)b * T * C, C, hs, NH);
    }
}

/*   dP^T (T_s x T_t) = V . dY^T          -> A = v (op T, ld 3C), B = dout (op N, ld C)
 *   dV^T (hs x T_s)  = dY^T . P          -> A = dout (op N, ld C), B = att (op T, ld T)
 *   dQ^T (hs x T_t)  = K^T . dS^T        -> A = k (op N, ld 3C), B = dS (op N, ld T)
 *   dK^T (hs x T_s)  = Q^T . dS          -> A = q (op N, ld 3C), B = dS (op T, ld T) */
void cuda_attention_bwd(const nawal_ops *o, float *dqkv, float *datt, const float *dout,
                        const float *qkv, const float *att, int B, int T, int C, int NH) {
    int hs = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    long long TT = (long long)T * T;
    for (int b = 0; b < B; b++) {
        const float *v = qkv + (size_t)b * T * C3 + 2 * C;
        const float *dy = dout + (size_t)b * T * C;
        const float *p = att + (size_t)b * NH * TT;
        float *ds = datt + (size_t)b * NH * TT;
        float *dv = dqkv + (size_t)b * T * C3 + 2 * C;
        gemm_heads(o, "attention_bwd", 1, 0, T, T, hs, 1.0f, v, C3, hs, dy, C, hs, ds, T, TT, NH);
        gemm_heads(o, "attention_bwd", 0, 1, hs, T, T, 1.0f, dy, C, hs, p, T, TT, dv, C3, hs, NH);
    }
    launch_rows(o, "attention_bwd", (long long)B * NH * T, T, datt, att, scale, 1);
    for (int b = 0; b < B; b++) {
        const float *q = qkv + (size_t)b * T * C3, *k = q + C;
        const float *ds = datt + (size_t)b * NH * TT;
        float *dq = dqkv + (size_t)b * T * C3, *dk = dq + C;
        gemm_heads(o, "attention_bwd", 0, 0, hs, T, T, 1.0f, k, C3, hs, ds, T, TT, dq, C3, hs, NH);
        gemm_heads(o, "attention_bwd", 0, 1, hs, T, T, 1.0f, q, C3, hs, ds, T, TT, dk, C3, hs, NH);
    }
}
