/* attention.cu - CUDA causal multi-head self-attention forward/backward.
 *
 * The four products (scale Q K^T, P V, and in the backward dP = dY V^T,
 * dV = P^T dY, dQ = dS K, dK = dS^T Q) are each ONE batched GEMM over all
 * B x NH (batch, head) pairs (cuBLAS, the backend's precision), reading q,
 * k, v straight out of qkv[B][T][3C] with leading dimension 3C: a small
 * kernel writes the per-pair operand pointers first. Between the products a
 * warp-per-row kernel applies the causal softmax (forward) or its backward,
 * with the shared nawal_expf. att[B][NH][T][T] keeps the probabilities with
 * the upper triangle zero, as the CPU backend does. Like the CPU path it
 * computes the full T x T square. NAWAL_CUDA_ATTENTION=flash sends head
 * sizes up to 64 to the fused kernels of attention_flash.cu instead (att and
 * datt then hold per-row statistics, not probabilities). */
#include "cuda_common.h"
#include "cuda_reduce.cuh"
#include "elementwise.h"
#include <math.h>

/* Operand pointers of up to 4 batched GEMMs: for GEMM g and operand j
 * (A, B, C), pair (b, h) uses base[g][j] + b * sb[g][j] + h * sh[g][j]. */
typedef struct {
    const float *base[4][3];
    long long sb[4][3], sh[4][3];
} att_ptr_spec;

__global__ static void att_ptrs_kernel(const float **ptrs, att_ptr_spec spec, int G, int B, int NH) {
    int i = blockIdx.x * blockDim.x + threadIdx.x, P = B * NH;
    if (i >= P) return;
    int b = i / NH, h = i % NH;
    for (int g = 0; g < G; g++)
        for (int j = 0; j < 3; j++) ptrs[((size_t)g * 3 + j) * P + i] = spec.base[g][j] + b * spec.sb[g][j] + h * spec.sh[g][j];
}

/* device array of G*3*B*NH pointers, filled per spec */
static const float **att_ptrs(const nawal_ops *o, const char *op, const att_ptr_spec *spec, int G, int B, int NH) {
    cuda_state *s = CUDA_STATE(o);
    size_t need = (size_t)G * 3 * B * NH;
    if (need > s->ptrs_cap) {
        cuda_buffers_moving(s, op, "attention pointer-array");
        if (s->ptrs) {
            CUDA_CHECK(op, cudaStreamSynchronize(s->stream));
            CUDA_CHECK(op, cudaFree(s->ptrs));
        }
        size_t cap = need < 4096 ? 4096 : need * 2;
        CUDA_CHECK(op, cudaMalloc((void **)&s->ptrs, cap * sizeof(float *)));
        s->ptrs_cap = cap;
    }
    att_ptrs_kernel<<<(B * NH + 127) / 128, 128, 0, s->stream>>>((const float **)s->ptrs, *spec, G, B, NH);
    LAUNCH_CHECK(op, "att_ptrs_kernel");
    return (const float **)s->ptrs;
}

/* C_cm (m x n) = alpha op(A) op(B) for each of the count pairs, pointers from arrays */
static void gemm_pairs(const nawal_ops *o, const char *op, int ta, int tb, int m, int n, int k, float alpha,
                       const float *const *A, int lda, const float *const *Bm, int ldb, float *const *Cm, int ldc,
                       int count) {
    cuda_state *s = CUDA_STATE(o);
    float beta = 0.0f;
    /* bf16 mode keeps these at tf32: rounding att (T x T) to bf16 would cost
     * more traffic than the products save */
    cublasComputeType_t ct = s->precision == NAWAL_PREC_FP32 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32;
    BLAS_CHECK(op, cublasGemmBatchedEx(s->blas, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k,
                                       &alpha, (const void *const *)A, CUDA_R_32F, lda, (const void *const *)Bm,
                                       CUDA_R_32F, ldb, &beta, (void *const *)Cm, CUDA_R_32F, ldc, count, ct,
                                       CUBLAS_GEMM_DEFAULT));
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

static void spec_set(att_ptr_spec *sp, int g, int j, const float *base, long long sb, long long sh) {
    sp->base[g][j] = base;
    sp->sb[g][j] = sb;
    sp->sh[g][j] = sh;
}

/* Row-major X (r x c, ld) is column-major X^T (c x r, ld). Per pair (b, h):
 *   S^T (T_s x T_t) = K (T_s x hs) . Q^T        -> A = k (op T, ld 3C), B = q (op N, ld 3C)
 *   Y^T (hs x T)    = V^T (hs x T_s) . P^T      -> A = v (op N, ld 3C), B = att (op N, ld T) */
void cuda_attention_fwd(const nawal_ops *o, float *out, float *att, const float *qkv,
                        int B, int T, int C, int NH) {
    int hs = C / NH, C3 = 3 * C, P = B * NH;
    if (cuda_flash_attention_on(hs)) {
        cuda_flash_attention_fwd(o, out, att, qkv, B, T, C, NH);
        return;
    }
    float scale = 1.0f / sqrtf((float)hs);
    long long TT = (long long)T * T, bq = (long long)T * C3;
    att_ptr_spec sp;
    memset(&sp, 0, sizeof sp);
    spec_set(&sp, 0, 0, qkv + C, bq, hs);          /* k */
    spec_set(&sp, 0, 1, qkv, bq, hs);              /* q */
    spec_set(&sp, 0, 2, att, NH * TT, TT);         /* S */
    spec_set(&sp, 1, 0, qkv + 2 * C, bq, hs);      /* v */
    spec_set(&sp, 1, 1, att, NH * TT, TT);         /* P */
    spec_set(&sp, 1, 2, out, (long long)T * C, hs);/* Y */
    const float **pt = att_ptrs(o, "attention_fwd", &sp, 2, B, NH);
    gemm_pairs(o, "attention_fwd", 1, 0, T, T, hs, scale, pt, C3, pt + P, C3, (float *const *)(pt + 2 * P), T, P);
    launch_rows(o, "attention_fwd", (long long)P * T, T, att, NULL, 0.0f, 0);
    gemm_pairs(o, "attention_fwd", 0, 0, hs, T, T, 1.0f, pt + 3 * P, C3, pt + 4 * P, T, (float *const *)(pt + 5 * P), C, P);
}

/*   dP^T (T_s x T_t) = V . dY^T          -> A = v (op T, ld 3C), B = dout (op N, ld C)
 *   dV^T (hs x T_s)  = dY^T . P          -> A = dout (op N, ld C), B = att (op T, ld T)
 *   dQ^T (hs x T_t)  = K^T . dS^T        -> A = k (op N, ld 3C), B = dS (op N, ld T)
 *   dK^T (hs x T_s)  = Q^T . dS          -> A = q (op N, ld 3C), B = dS (op T, ld T) */
void cuda_attention_bwd(const nawal_ops *o, float *dqkv, float *datt, const float *dout,
                        const float *qkv, const float *att, int B, int T, int C, int NH) {
    int hs = C / NH, C3 = 3 * C, P = B * NH;
    if (cuda_flash_attention_on(hs)) {
        cuda_flash_attention_bwd(o, dqkv, datt, dout, qkv, att, B, T, C, NH);
        return;
    }
    float scale = 1.0f / sqrtf((float)hs);
    long long TT = (long long)T * T, bq = (long long)T * C3, bo = (long long)T * C;
    att_ptr_spec sp;
    memset(&sp, 0, sizeof sp);
    spec_set(&sp, 0, 0, qkv + 2 * C, bq, hs);      /* v */
    spec_set(&sp, 0, 1, dout, bo, hs);             /* dY */
    spec_set(&sp, 0, 2, datt, NH * TT, TT);        /* dP */
    spec_set(&sp, 1, 0, dout, bo, hs);             /* dY */
    spec_set(&sp, 1, 1, att, NH * TT, TT);         /* P */
    spec_set(&sp, 1, 2, dqkv + 2 * C, bq, hs);     /* dV */
    spec_set(&sp, 2, 0, qkv + C, bq, hs);          /* k */
    spec_set(&sp, 2, 1, datt, NH * TT, TT);        /* dS */
    spec_set(&sp, 2, 2, dqkv, bq, hs);             /* dQ */
    spec_set(&sp, 3, 0, qkv, bq, hs);              /* q */
    spec_set(&sp, 3, 1, datt, NH * TT, TT);        /* dS */
    spec_set(&sp, 3, 2, dqkv + C, bq, hs);         /* dK */
    const float **pt = att_ptrs(o, "attention_bwd", &sp, 4, B, NH);
#define PT(g, j) (pt + ((size_t)(g) * 3 + (j)) * P)
    gemm_pairs(o, "attention_bwd", 1, 0, T, T, hs, 1.0f, PT(0, 0), C3, PT(0, 1), C, (float *const *)PT(0, 2), T, P);
    gemm_pairs(o, "attention_bwd", 0, 1, hs, T, T, 1.0f, PT(1, 0), C, PT(1, 1), T, (float *const *)PT(1, 2), C3, P);
    launch_rows(o, "attention_bwd", (long long)P * T, T, datt, att, scale, 1);
    gemm_pairs(o, "attention_bwd", 0, 0, hs, T, T, 1.0f, PT(2, 0), C3, PT(2, 1), T, (float *const *)PT(2, 2), C3, P);
    gemm_pairs(o, "attention_bwd", 0, 1, hs, T, T, 1.0f, PT(3, 0), C3, PT(3, 1), T, (float *const *)PT(3, 2), C3, P);
#undef PT
}
