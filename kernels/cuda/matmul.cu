/* matmul.cu - CUDA matmul forward/backward through cuBLASLt.
 *
 * Row-major tensors are handed to column-major cuBLASLt as their transposes
 * (a row-major X[r][c] is a column-major c x r matrix), so every product
 * below is written as D_cm = op(A) op(B) with m, n, k in that view.
 * The forward fuses the bias into the GEMM epilogue; the weight gradient
 * accumulates (beta = 1); the bias gradient is a deterministic column sum
 * (vector.cu). Matmul descriptors, layouts and the chosen algorithm are
 * cached per shape, layout, pointer alignment and precision, so a training
 * step pays for cuBLASLt's heuristic once. Unless NAWAL_CUDA_DETERMINISTIC=1,
 * a new plan also times cuBLASLt's top candidates (up to 8, on the call's
 * real operands, writing into the call's output, which it overwrites next,
 * or into a temporary when it accumulates) and keeps the fastest; a plan
 * made during a graph capture takes the heuristic's first choice;
 * the choice can differ between processes, so results are bitwise
 * repeatable within a process always and across processes only in the
 * deterministic mode (heuristic's first choice).
 *
 * Precision: fp32 and tf32 hand fp32 operands to cuBLASLt with compute type
 * 32F or 32F_FAST_TF32. bf16 rounds both operands to bf16 copies (one cast
 * kernel each, into scratch) and runs a bf16 x bf16 -> fp32 GEMM with fp32
 * accumulation: cuBLASLt's 32F_FAST_16BF on fp32 operands measured no
 * faster and no less exact than tf32 on an H200, so it is not used. */
#include "cuda_map.cuh"
#include <cuda_bf16.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int ta, tb, m, n, k, lda, ldb, ldc;
    int bias, beta_one, align;   /* bias epilogue, beta == 1, min pointer alignment (bytes) */
    int compute;
    int bf16;                    /* A and B are bf16 */
    int batch;                   /* strided batch: count (0 or 1: one product) */
    long long sa, sb, sd;        /* element strides between the batch's matrices */
} plan_key;

struct cuda_matmul_plan {
    plan_key key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
};

#define MAX_PLANS 256

static int ptr_align(const void *p) {
    uintptr_t u = (uintptr_t)p;
    int a = 256;
    while (a > 4 && (u % (uintptr_t)a)) a /= 2;
    return a;
}

#define TUNE_CANDIDATES 8

/* times algorithm h on the plan's shapes: median-free min of 3 runs after one warm-up, in ms */
static float time_algo(cuda_state *s, const char *op, cuda_matmul_plan *p, const cublasLtMatmulAlgo_t *algo,
                       const void *A, const void *B, float *D) {
    cudaEvent_t e0, e1;
    CUDA_CHECK(op, cudaEventCreate(&e0));
    CUDA_CHECK(op, cudaEventCreate(&e1));
    float one = 1.0f, zero = 0.0f, best = 1e30f;
    for (int r = 0; r < 4; r++) {
        CUDA_CHECK(op, cudaEventRecord(e0, s->stream));
        cublasStatus_t st = cublasLtMatmul(s->lt, p->desc, &one, A, p->a, B, p->b, &zero, D, p->c, D, p->c, algo,
                                           s->lt_workspace, s->lt_workspace_bytes, s->stream);
        CUDA_CHECK(op, cudaEventRecord(e1, s->stream));
        CUDA_CHECK(op, cudaEventSynchronize(e1));
        if (st != CUBLAS_STATUS_SUCCESS) { best = 1e30f; break; }
        float ms = 0.0f;
        CUDA_CHECK(op, cudaEventElapsedTime(&ms, e0, e1));
        if (r > 0 && ms < best) best = ms;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return best;
}

static int deterministic_mode(void) {
    const char *e = getenv("NAWAL_CUDA_DETERMINISTIC");
    return e && *e && strcmp(e, "0");
}

/* D: the call's output, which a beta-0 plan's tuning runs write into (the
 * call overwrites it next); a beta-1 plan is tuned into a temporary */
static cuda_matmul_plan *get_plan(cuda_state *s, const char *op, const plan_key *key, const void *A, const void *B,
                                  const float *bias, float *D) {
    for (int i = 0; i < s->n_plans; i++)
        if (!memcmp(&s->plans[i].key, key, sizeof *key)) return &s->plans[i];
    if (!s->plans) {
        s->plans = (cuda_matmul_plan *)calloc(MAX_PLANS, sizeof(cuda_matmul_plan));
        if (!s->plans) cuda_fatal(op, "calloc", "out of host memory for matmul plans", __FILE__, __LINE__);
    }
    if (s->n_plans == MAX_PLANS) { /* many shapes (benchmarks): start over */
        cuda_matmul_plans_free(s);
        s->plans = (cuda_matmul_plan *)calloc(MAX_PLANS, sizeof(cuda_matmul_plan));
        if (!s->plans) cuda_fatal(op, "calloc", "out of host memory for matmul plans", __FILE__, __LINE__);
    }
    cuda_matmul_plan *p = &s->plans[s->n_plans];
    memset(p, 0, sizeof *p);
    p->key = *key;
    cublasOperation_t ta = key->ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = key->tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    BLAS_CHECK(op, cublasLtMatmulDescCreate(&p->desc, (cublasComputeType_t)key->compute, CUDA_R_32F));
    BLAS_CHECK(op, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    BLAS_CHECK(op, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (key->bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        BLAS_CHECK(op, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    }
    /* stored shapes: A is (ta ? k x m : m x k), B is (tb ? n x k : k x n), C is m x n */
    cudaDataType_t ab = key->bf16 ? CUDA_R_16BF : CUDA_R_32F;
    BLAS_CHECK(op, cublasLtMatrixLayoutCreate(&p->a, ab, key->ta ? key->k : key->m, key->ta ? key->m : key->k, key->lda));
    BLAS_CHECK(op, cublasLtMatrixLayoutCreate(&p->b, ab, key->tb ? key->n : key->k, key->tb ? key->k : key->n, key->ldb));
    BLAS_CHECK(op, cublasLtMatrixLayoutCreate(&p->c, CUDA_R_32F, key->m, key->n, key->ldc));
    if (key->batch > 1) {
        cublasLtMatrixLayout_t lay[3] = { p->a, p->b, p->c };
        long long st[3] = { key->sa, key->sb, key->sd };
        int32_t count = key->batch;
        for (int i = 0; i < 3; i++) {
            BLAS_CHECK(op, cublasLtMatrixLayoutSetAttribute(lay[i], CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
            int64_t stride = st[i];
            BLAS_CHECK(op, cublasLtMatrixLayoutSetAttribute(lay[i], CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                            sizeof stride));
        }
    }
    cublasLtMatmulPreference_t pref;
    BLAS_CHECK(op, cublasLtMatmulPreferenceCreate(&pref));
    BLAS_CHECK(op, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                        &s->lt_workspace_bytes, sizeof s->lt_workspace_bytes));
    uint32_t al = (uint32_t)key->align;
    BLAS_CHECK(op, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al, sizeof al));
    BLAS_CHECK(op, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al, sizeof al));
    BLAS_CHECK(op, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al, sizeof al));
    BLAS_CHECK(op, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al, sizeof al));
    cublasLtMatmulHeuristicResult_t h[TUNE_CANDIDATES];
    int found = 0, want = deterministic_mode() ? 1 : TUNE_CANDIDATES;
    BLAS_CHECK(op, cublasLtMatmulAlgoGetHeuristic(s->lt, p->desc, p->a, p->b, p->c, p->c, pref, want, h, &found));
    cublasLtMatmulPreferenceDestroy(pref);
    if (!found) {
        char msg[256];
        snprintf(msg, sizeof msg, "no cuBLASLt algorithm for m=%d n=%d k=%d ta=%d tb=%d bias=%d align=%d",
                 key->m, key->n, key->k, key->ta, key->tb, key->bias, key->align);
        cuda_fatal(op, "cublasLtMatmulAlgoGetHeuristic", msg, __FILE__, __LINE__);
    }
    int pick = 0;
    /* during a graph capture (a shape unseen, e.g. after the cache was
     * emptied) the heuristic's first choice: timing would sync */
    if (found > 1 && !s->capturing) {
        float *tmp = NULL, *out = D;
        if (key->beta_one) { /* not batched (only weight gradients accumulate) */
            CUDA_CHECK(op, cudaMalloc((void **)&tmp, (size_t)key->ldc * key->n * sizeof(float)));
            out = tmp;
        }
        if (bias)
            BLAS_CHECK(op, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
        float best = 1e30f;
        for (int i = 0; i < found; i++) {
            float ms = time_algo(s, op, p, &h[i].algo, A, B, out);
            if (ms < best) { best = ms; pick = i; }
        }
        if (tmp) CUDA_CHECK(op, cudaFree(tmp));
        if (getenv("NAWAL_CUDA_VERBOSE"))
            fprintf(stderr, "nawal cuda: matmul m=%d n=%d k=%d ta=%d tb=%d bf16=%d: candidate %d of %d, %.3f ms\n",
                    key->m, key->n, key->k, key->ta, key->tb, key->bf16, pick, found, best);
    }
    p->algo = h[pick].algo;
    s->n_plans++;
    return p;
}

void cuda_matmul_plans_free(cuda_state *s) {
    for (int i = 0; i < s->n_plans; i++) {
        cublasLtMatmulDescDestroy(s->plans[i].desc);
        cublasLtMatrixLayoutDestroy(s->plans[i].a);
        cublasLtMatrixLayoutDestroy(s->plans[i].b);
        cublasLtMatrixLayoutDestroy(s->plans[i].c);
    }
    free(s->plans);
    s->plans = NULL;
    s->n_plans = 0;
}

/* bf16 operand staging: each operand is cast into scratch with its leading
 * dimension padded to a multiple of 64 (zeros in the padding), so rows are
 * 16-byte aligned whatever the shape. Padding fp32 operands and outputs too
 * was tried and measured on an H200 (db29e5c): the 8192 x 768 x 50257
 * LM-head product stayed at ~100-124 TFLOP/s with or without it (PyTorch's
 * torch.matmul: 123), so its slowness is not row alignment, and the extra
 * copies only cost time; fp32/tf32 operands are used in place. */
#define LD_PAD 64
static size_t pad_ld(int rows) { return ((size_t)rows + LD_PAD - 1) / LD_PAD * LD_PAD; }
static size_t align_bytes(size_t b) { return (b + 255) / 256 * 256; }

/* dst[c][0..ldp) = bf16(src[c][0..rows)) then zeros, for c in [0, cols) (column-major view) */
static void stage_bf16(const nawal_ops *o, const char *op, __nv_bfloat16 *dst, const float *src, int rows, int cols,
                       int ld, size_t ldp) {
    cuda_map(o, op, ldp * (size_t)cols, [=] __device__(size_t i) {
        size_t r = i % ldp, c = i / ldp;
        dst[i] = __float2bfloat16_rn(r < (size_t)rows ? src[c * ld + r] : 0.0f);
    });
}

/* A strided batch of `count` products, matrix i at A + i sa, B + i sb,
 * D + i sd (elements); count 1 is one product. With bf16 staging the A and
 * B matrices of the batch must be adjacent column blocks (sa = its columns
 * x lda, likewise sb), so each operand is cast as one matrix. */
typedef struct {
    int count;
    long long sa, sb, sd;
} gemm_batch;
static const gemm_batch ONE = { 1, 0, 0, 0 };

/* the alignment every matrix of a batch keeps: base's, and its stride's */
static int batch_align(const void *base, long long stride, size_t elem, int count) {
    int a = ptr_align(base);
    if (count > 1) {
        int b = ptr_align((const void *)(uintptr_t)((size_t)stride * elem));
        if (b < a) a = b;
    }
    return a;
}

/* D(m x n, ldc) = op(A) op(B) (+ D if beta_one) (+ bias[m] broadcast over columns),
 * column-major, A stored (ta ? k x m : m x k) with lda, B (tb ? n x k : k x n) with ldb;
 * for each matrix of the batch bt */
static void gemm_run(const nawal_ops *o, const char *op, int ta, int tb, int m, int n, int k,
                     const float *A, int lda, const float *B, int ldb, float *D, int ldc,
                     int beta_one, const float *bias, gemm_batch bt) {
    cuda_state *s = CUDA_STATE(o);
    if (m <= 0 || n <= 0 || bt.count <= 0) return;
    if (k <= 0) { /* empty sum: D = beta D (+ bias) is not worth a plan; only the shapes we never hit */
        cuda_fatal(op, "gemm", "k = 0", __FILE__, __LINE__);
    }
    if (bt.count > 1 && beta_one) cuda_fatal(op, "gemm", "an accumulating (beta 1) batch: not supported", __FILE__, __LINE__);
    int bf16 = s->precision == NAWAL_PREC_BF16;
    const void *Ause = A, *Buse = B;
    size_t lda_p = (size_t)lda, ldb_p = (size_t)ldb, esize = bf16 ? sizeof(__nv_bfloat16) : sizeof(float);
    long long sa = bt.sa, sb = bt.sb;
    if (bf16) {
        int a_rows = ta ? k : m, a_cols = ta ? m : k, b_rows = tb ? n : k, b_cols = tb ? k : n;
        if (bt.count > 1 && (bt.sa != (long long)a_cols * lda || bt.sb != (long long)b_cols * ldb))
            cuda_fatal(op, "gemm", "a bf16 batch whose matrices are not adjacent column blocks", __FILE__, __LINE__);
        a_cols *= bt.count; /* the batch's matrices side by side, cast as one */
        b_cols *= bt.count;
        lda_p = pad_ld(a_rows);
        ldb_p = pad_ld(b_rows);
        size_t bytes_a = align_bytes(lda_p * a_cols * sizeof(__nv_bfloat16));
        char *scr = (char *)cuda_scratch(o, bytes_a + ldb_p * b_cols * sizeof(__nv_bfloat16));
        stage_bf16(o, op, (__nv_bfloat16 *)scr, A, a_rows, a_cols, lda, lda_p);
        stage_bf16(o, op, (__nv_bfloat16 *)(scr + bytes_a), B, b_rows, b_cols, ldb, ldb_p);
        Ause = scr;
        Buse = scr + bytes_a;
        sa = (long long)(a_cols / bt.count) * (long long)lda_p;
        sb = (long long)(b_cols / bt.count) * (long long)ldb_p;
    }
    int al = batch_align(Ause, sa, esize, bt.count);
    int a2 = batch_align(Buse, sb, esize, bt.count), a3 = batch_align(D, bt.sd, sizeof(float), bt.count);
    if (a2 < al) al = a2;
    if (a3 < al) al = a3;
    if (bias && ptr_align(bias) < al) al = ptr_align(bias);
    plan_key key;
    memset(&key, 0, sizeof key);
    key.ta = ta; key.tb = tb; key.m = m; key.n = n; key.k = k;
    key.lda = (int)lda_p; key.ldb = (int)ldb_p; key.ldc = ldc;
    key.bias = bias != NULL; key.beta_one = beta_one; key.align = al;
    key.compute = bf16 ? (int)CUBLAS_COMPUTE_32F : (int)s->compute;
    key.bf16 = bf16;
    if (bt.count > 1) {
        key.batch = bt.count;
        key.sa = sa;
        key.sb = sb;
        key.sd = bt.sd;
    }
    cuda_matmul_plan *p = get_plan(s, op, &key, Ause, Buse, bias, D);
    if (bias)
        BLAS_CHECK(op, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    float one = 1.0f, beta = beta_one ? 1.0f : 0.0f;
    BLAS_CHECK(op, cublasLtMatmul(s->lt, p->desc, &one, Ause, p->a, Buse, p->b, &beta, D, p->c, D, p->c, &p->algo,
                                  s->lt_workspace, s->lt_workspace_bytes, s->stream));
}

static void gemm(const nawal_ops *o, const char *op, int ta, int tb, int m, int n, int k,
                 const float *A, int lda, const float *B, int ldb, float *D, int ldc,
                 int beta_one, const float *bias) {
    gemm_run(o, op, ta, tb, m, n, k, A, lda, B, ldb, D, ldc, beta_one, bias, ONE);
}

/* out[N][OC] = inp[N][C] @ w (+ bias).  Column-major: out_cm (OC x N) = W_cm op . inp_cm (C x N).
 * IN_OUT w[C][OC] is W_cm (OC x C, ld OC): no transpose. OUT_IN w[OC][C] is (C x OC, ld C): transpose. */
void cuda_matmul_fwd(const nawal_ops *o, float *out, const float *inp, const float *w,
                     const float *bias, int N, int C, int OC, nawal_wlayout layout) {
    if (layout == NAWAL_W_IN_OUT) gemm(o, "matmul_fwd", 0, 0, OC, N, C, w, OC, inp, C, out, OC, 0, bias);
    else gemm(o, "matmul_fwd", 1, 0, OC, N, C, w, C, inp, C, out, OC, 0, bias);
}

/* dinp[N][C] = dout @ w^T: dinp_cm (C x N) = op(W_cm) . dout_cm (OC x N)
 * dw += inp^T dout:  IN_OUT dw_cm (OC x C) = dout_cm (OC x N) . inp_cm^T (N x C)
 *                    OUT_IN dw_cm (C x OC) = inp_cm (C x N) . dout_cm^T (N x OC) */
void cuda_matmul_bwd(const nawal_ops *o, float *dinp, float *dw, float *dbias,
                     const float *dout, const float *inp, const float *w,
                     int N, int C, int OC, nawal_wlayout layout) {
    if (layout == NAWAL_W_IN_OUT) {
        if (dinp) gemm(o, "matmul_bwd", 1, 0, C, N, OC, w, OC, dout, OC, dinp, C, 0, NULL);
        if (dw) gemm(o, "matmul_bwd", 0, 1, OC, C, N, dout, OC, inp, C, dw, OC, 1, NULL);
    } else {
        if (dinp) gemm(o, "matmul_bwd", 0, 0, C, N, OC, w, C, dout, OC, dinp, C, 0, NULL);
        if (dw) gemm(o, "matmul_bwd", 0, 1, C, OC, N, inp, C, dout, OC, dw, C, 1, NULL);
    }
    if (dbias) cuda_colsum(o, "matmul_bwd", dbias, NULL, dout, NULL, NULL, NULL, N, OC);
}

/* pe_grad_linear's products, one strided batch over the B examples: as
 * matmul_bwd's dw with N = T, example b's operands the T-column block b
 * of dout_cm / inp_cm and its output dw + b * stride (overwritten):
 *   IN_OUT dw_b,cm (OC x C) = dout_b,cm (OC x T) . inp_b,cm^T
 *   OUT_IN dw_b,cm (C x OC) = inp_b,cm (C x T) . dout_b,cm^T */
void cuda_pe_grad_gemm(const nawal_ops *o, float *dw, size_t stride, const float *dout, const float *inp, int B, int T,
                       int C, int OC, nawal_wlayout layout) {
    gemm_batch bt = { B, 0, 0, (long long)stride };
    long long so = (long long)T * OC, si = (long long)T * C;
    if (layout == NAWAL_W_IN_OUT) {
        bt.sa = so;
        bt.sb = si;
        gemm_run(o, "pe_grad_linear", 0, 1, OC, C, T, dout, OC, inp, C, dw, OC, 0, NULL, bt);
    } else {
        bt.sa = si;
        bt.sb = so;
        gemm_run(o, "pe_grad_linear", 0, 1, C, OC, T, inp, C, dout, OC, dw, C, 0, NULL, bt);
    }
}
