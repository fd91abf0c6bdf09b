/* dp.cu - CUDA per-example quantities for DP-SGD: squared per-example
 * gradient norms (linear layers by ghost norm or materialised, bias,
 * layernorm, position embedding, the tied token-embedding / LM-head),
 * per-example scaling and the Philox Gaussian noise.
 *
 * Every norm is two deterministic stages without atomics: a first kernel
 * writes double partials part[b][j] for fixed pieces j of example b (element
 * chunks of a flat product, or 32-column tiles), then dp_finish_kernel, one
 * block per example, adds them by a fixed tree and does norms[b] += sum. The
 * pieces depend on the shapes only, so reruns repeat bit for bit. Products
 * (Gram matrices, materialised weight gradients) are strided-batched cuBLAS
 * GEMMs in fp32 (CUBLAS_COMPUTE_32F) whatever the matmul precision: the
 * clipping decision must see the true norm. Examples go in groups whose
 * GEMM outputs fit DP_GROUP_FLOATS, so scratch stays bounded for any batch. */
#include "cuda_map.cuh"
#include "cuda_reduce.cuh"
#include "elementwise.h"
#include "philox.h"

#define DP_THREADS 256                        /* stage-1 block (power of two) */
#define DP_FINISH_THREADS 128                 /* dp_finish_kernel block (power of two) */
#define DP_CHUNK ((size_t)8192)               /* elements per stage-1 block of a flat product */
#define DP_MAX_PIECES 65535                   /* pieces go on grid.y */
#define DP_GROUP_FLOATS ((size_t)1 << 24)     /* GEMM outputs per example group: 64 MiB */

static size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

/* Splits n elements into pieces of `*piece` elements (DP_CHUNK, larger only
 * when that would need more than DP_MAX_PIECES pieces); returns the count. */
static int dp_pieces(size_t n, size_t *piece) {
    size_t k = (n + DP_CHUNK - 1) / DP_CHUNK;
    if (k > DP_MAX_PIECES) k = DP_MAX_PIECES;
    *piece = (n + k - 1) / k;
    return (int)((n + *piece - 1) / *piece);
}

/* examples per group when each needs `per` floats of GEMM output */
static int dp_group(int B, size_t per) {
    size_t g = per >= DP_GROUP_FLOATS ? 1 : DP_GROUP_FLOATS / per;
    return g < (size_t)B ? (int)g : B;
}

/* ---- stage 1 kernels: grid (example b, piece j), part[b * gridDim.y + j] ---- */

/* sum over piece j of example b of X_b[i] * Y_b[i], examples n apart */
__global__ static void dp_dot_kernel(double *part, const float *X, const float *Y, size_t n, size_t piece) {
    size_t b = blockIdx.x, lo = (size_t)blockIdx.y * piece, hi = lo + piece < n ? lo + piece : n;
    const float *x = X + b * n, *y = Y + b * n;
    double acc = 0.0;
    for (size_t i = lo + threadIdx.x; i < hi; i += blockDim.x) acc += (double)x[i] * y[i];
    acc = block_sum_double(acc);
    if (threadIdx.x == 0) part[b * gridDim.y + blockIdx.y] = acc;
}

/* For a block (32, 8) on (example b = blockIdx.x, columns c = 32 blockIdx.y
 * + tx): *sb = sum_t D_b[t][c] and, with inp, *sw = sum_t D_b[t][c]
 * xhat_b[t][c], in double; rows ty, ty + 8, ... per thread, then the 8 row
 * lanes in order. Every thread of the block must call it; the sums are
 * valid in row lane ty = 0 (0 past the last column). */
static __device__ void example_colsums(const float *D, const float *inp, const float *mean, const float *rstd, int T,
                                       int C, double *sb_out, double *sw_out) {
    __shared__ double sh[2][8][32];
    int c = blockIdx.y * 32 + threadIdx.x;
    size_t row0 = (size_t)blockIdx.x * T;
    double sb = 0.0, sw = 0.0;
    if (c < C) {
        for (int t = threadIdx.y; t < T; t += 8) {
            size_t r = row0 + t;
            double d = D[r * C + c];
            sb += d;
            if (inp) sw += d * (((double)inp[r * C + c] - mean[r]) * rstd[r]);
        }
    }
    sh[0][threadIdx.y][threadIdx.x] = sb;
    sh[1][threadIdx.y][threadIdx.x] = sw;
    __syncthreads();
    double a = 0.0, aw = 0.0;
    if (threadIdx.y == 0)
        for (int k = 0; k < 8; k++) { a += sh[0][k][threadIdx.x]; aw += sh[1][k][threadIdx.x]; }
    *sb_out = a;
    *sw_out = aw;
}

/* part = sum over the block's tile of sb^2 + sw^2 (example_colsums) */
__global__ static void dp_colsq_kernel(double *part, const float *D, const float *inp, const float *mean,
                                       const float *rstd, int T, int C) {
    double a, aw;
    example_colsums(D, inp, mean, rstd, T, C, &a, &aw);
    double v = threadIdx.y == 0 ? a * a + aw * aw : 0.0;
    v = block_sum_double(v);
    if (threadIdx.x == 0 && threadIdx.y == 0) part[(size_t)blockIdx.x * gridDim.y + blockIdx.y] = v;
}

/* the per-example gradients themselves: out_b[c] = sb, out_w_b[c] = sw
 * (with inp), example b's at b * stride */
__global__ static void pe_colgrad_kernel(float *out, float *out_w, size_t stride, const float *D, const float *inp,
                                         const float *mean, const float *rstd, int T, int C) {
    double a, aw;
    example_colsums(D, inp, mean, rstd, T, C, &a, &aw);
    int c = blockIdx.y * 32 + threadIdx.x;
    if (threadIdx.y == 0 && c < C) {
        size_t i = (size_t)blockIdx.x * stride + c;
        out[i] = (float)a;
        if (inp) out_w[i] = (float)aw;
    }
}

/* tied op's ||E_b||^2 + 2 <E_b, H_b>: term (s, t) is [tok_s == tok_t] G_b[s][t]
 * + 2 dlogits_b[s][tok_t] M_b[s][t], over the T*T pairs of piece j */
__global__ static void dp_tied_kernel(double *part, const float *G, const float *M, const float *dlogits,
                                      const int32_t *tok, int T, int V, size_t piece) {
    size_t b = blockIdx.x, n = (size_t)T * T;
    size_t lo = (size_t)blockIdx.y * piece, hi = lo + piece < n ? lo + piece : n;
    const float *g = G + b * n, *m = M + b * n, *dl = dlogits + b * T * (size_t)V;
    const int32_t *tk = tok + b * T;
    double acc = 0.0;
    for (size_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        size_t s = i / T, t = i % T;
        int ts = tk[s], tt = tk[t];
        double v = ts == tt ? (double)g[i] : 0.0;
        if ((unsigned)tt < (unsigned)V) v += 2.0 * (double)dl[s * V + tt] * m[i]; /* ids are in [0,V): guard only */
        acc += v;
    }
    acc = block_sum_double(acc);
    if (threadIdx.x == 0) part[b * gridDim.y + blockIdx.y] = acc;
}

/* ---- stage 2: norms[b] += sum_j part[b][j], a block per example, the sum
 * added in double and rounded once (as the CPU backend does) ---- */
__global__ static void dp_finish_kernel(float *norms, const double *part, int pieces) {
    const double *pb = part + (size_t)blockIdx.x * pieces;
    double acc = 0.0;
    for (int j = threadIdx.x; j < pieces; j += blockDim.x) acc += pb[j];
    acc = block_sum_double(acc);
    if (threadIdx.x == 0) norms[blockIdx.x] = (float)((double)norms[blockIdx.x] + acc);
}

static void dp_finish(const nawal_ops *o, const char *op, float *norms, const double *part, int nb, int pieces) {
    dp_finish_kernel<<<nb, DP_FINISH_THREADS, 0, CUDA_STATE(o)->stream>>>(norms, part, pieces);
    LAUNCH_CHECK(op, "dp_finish_kernel");
}

/* norms[b] += sum_i X_b[i] Y_b[i] for nb examples of n elements; part holds nb * pieces */
static void dp_dot(const nawal_ops *o, const char *op, float *norms, double *part, const float *X, const float *Y,
                   size_t n, int nb) {
    size_t piece;
    int pieces = dp_pieces(n, &piece);
    dp_dot_kernel<<<dim3(nb, pieces), DP_THREADS, 0, CUDA_STATE(o)->stream>>>(part, X, Y, n, piece);
    LAUNCH_CHECK(op, "dp_dot_kernel");
    dp_finish(o, op, norms, part, nb, pieces);
}

/* ---- GEMMs ----
 * cuBLAS is column-major: a row-major X (r x c) is the column-major X^T
 * (c x r, ld c) in place. dp_gemm: C_i (m x n, ldc) = op(A_i) op(B_i) for
 * the count items i, A stored (ta ? k x m : m x k), B (tb ? n x k : k x n). */
static void dp_gemm(const nawal_ops *o, const char *op, int ta, int tb, int m, int n, int k, const float *A, int lda,
                    long long sA, const float *Bm, int ldb, long long sB, float *Cm, int ldc, long long sC, int count) {
    cuda_state *s = CUDA_STATE(o);
    float one = 1.0f, zero = 0.0f;
    BLAS_CHECK(op, cublasGemmStridedBatchedEx(s->blas, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                              m, n, k, &one, A, CUDA_R_32F, lda, sA, Bm, CUDA_R_32F, ldb, sB, &zero,
                                              Cm, CUDA_R_32F, ldc, sC, count, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/* Gram: out_b[s][t] = <Y_b[s], X_b[t]> (row-major T x T) for X, Y [nb*T][k].
 * X_b's column-major view is X_b^T (k x T, ld k), likewise Y_b; the
 * column-major product (T x T, ld T)  op_T(X_b^T) op_N(Y_b^T) = X_b Y_b^T
 * has (i, j) = <X_b[i], Y_b[j]> at i + j T, which is row-major out_b[j][i]:
 *   m = n = T, k = k;  A = X (op T, lda k, stride T k);  B = Y (op N, ldb k,
 *   stride T k);  C = out (ldc T, stride T T). */
static void dp_gram(const nawal_ops *o, const char *op, float *out, const float *X, const float *Y, int nb, int T,
                    int k) {
    dp_gemm(o, op, 1, 0, T, T, k, X, k, (long long)T * k, Y, k, (long long)T * k, out, T, (long long)T * T, nb);
}

/* norms[b] += ||A_b^T D_b||_F^2. Ghost (2 T^2 < d p): Ga = A_b A_b^T and
 * Gd = D_b D_b^T by dp_gram, then sum(Ga .* Gd). Materialised: W_b = A_b^T D_b
 * (d x p row-major = column-major p x d, ld p) as the column-major product
 * op_N(D_b^T) op_T(A_b^T) = D_b^T A_b, D_b^T being D's view (p x T, ld p) and
 * A_b^T A's (d x T, ld d):
 *   m = p, n = d, k = T;  A = D (op N, lda p, stride T p);  B = A (op T,
 *   ldb d, stride T d);  C = W (ldc p, stride d p);
 * then the sum of W_b's squares. One scratch call: GEMM outputs, then partials. */
static void dp_linear(const nawal_ops *o, const char *op, float *norms, const float *A, const float *D, int B, int T,
                      int d, int p) {
    if (B <= 0 || T <= 0 || d <= 0 || p <= 0) return;
    int ghost = 2LL * T * T < (long long)d * p;
    size_t n = ghost ? (size_t)T * T : (size_t)d * p; /* reduced elements per example */
    size_t per = ghost ? 2 * n : n;                  /* GEMM output floats per example */
    size_t piece;
    int pieces = dp_pieces(n, &piece), group = dp_group(B, per);
    size_t fbytes = align256((size_t)group * per * sizeof(float));
    char *scr = (char *)cuda_scratch(o, fbytes + (size_t)group * pieces * sizeof(double));
    float *out = (float *)scr, *out2 = out + (size_t)group * n;
    double *part = (double *)(scr + fbytes);
    for (int b0 = 0; b0 < B; b0 += group) {
        int nb = B - b0 < group ? B - b0 : group;
        const float *Ab = A + (size_t)b0 * T * d, *Db = D + (size_t)b0 * T * p;
        if (ghost) {
            dp_gram(o, op, out, Ab, Ab, nb, T, d);
            dp_gram(o, op, out2, Db, Db, nb, T, p);
            dp_dot(o, op, norms + b0, part, out, out2, n, nb);
        } else {
            dp_gemm(o, op, 0, 1, p, d, T, Db, p, (long long)T * p, Ab, d, (long long)T * d, out, p, (long long)d * p,
                    nb);
            dp_dot(o, op, norms + b0, part, out, out, n, nb);
        }
    }
}

void cuda_pe_norm_linear(const nawal_ops *o, float *norms, const float *A, const float *D, int B, int T, int d, int p) {
    dp_linear(o, "pe_norm_linear", norms, A, D, B, T, d, p);
}

/* bias (inp NULL) and layernorm: a (32, 8) block per (example, 32-column tile) */
static void dp_colsq(const nawal_ops *o, const char *op, float *norms, const float *D, const float *inp,
                     const float *mean, const float *rstd, int B, int T, int C) {
    if (B <= 0 || T <= 0 || C <= 0) return;
    int tiles = (C + 31) / 32;
    if (tiles > DP_MAX_PIECES) cuda_fatal(op, "dp_colsq", "more columns than the kernel's grid covers", __FILE__, __LINE__);
    double *part = (double *)cuda_scratch(o, (size_t)B * tiles * sizeof(double));
    dp_colsq_kernel<<<dim3(B, tiles), dim3(32, 8), 0, CUDA_STATE(o)->stream>>>(part, D, inp, mean, rstd, T, C);
    LAUNCH_CHECK(op, "dp_colsq_kernel");
    dp_finish(o, op, norms, part, B, tiles);
}

/* pe_bound_linear in two deterministic stages: one block per row r of the
 * B*T rows (coalesced, both squared norms by the block's fixed tree):
 * rowprod[r] = ||A[r]|| ||D[r]||; then one block per example sums its T
 * row products in a fixed order and does bounds[b] += sum^2. */
__global__ static void dp_rowprod_kernel(double *rowprod, const float *A, const float *D, int d, int p) {
    size_t r = blockIdx.x;
    const float *a = A + r * (size_t)d, *g = D + r * (size_t)p;
    double sa = 0.0, sd = 0.0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) sa += (double)a[i] * a[i];
    for (int i = threadIdx.x; i < p; i += blockDim.x) sd += (double)g[i] * g[i];
    sa = block_sum_double(sa);
    sd = block_sum_double(sd);
    if (threadIdx.x == 0) rowprod[r] = sqrt(sa) * sqrt(sd);
}

__global__ static void dp_bound_finish_kernel(float *bounds, const double *rowprod, int T) {
    size_t b = blockIdx.x;
    double acc = 0.0;
    for (int t = threadIdx.x; t < T; t += blockDim.x) acc += rowprod[b * T + t];
    acc = block_sum_double(acc);
    if (threadIdx.x == 0) bounds[b] = (float)((double)bounds[b] + acc * acc);
}

void cuda_pe_bound_linear(const nawal_ops *o, float *bounds, const float *A, const float *D, int B, int T, int d, int p) {
    if (B <= 0 || T <= 0) return;
    size_t rows = (size_t)B * T;
    if (rows > 0x7fffffffu) cuda_fatal("pe_bound_linear", "launch", "more than 2^31 rows", __FILE__, __LINE__);
    double *rowprod = (double *)cuda_scratch(o, rows * sizeof(double));
    cudaStream_t st = CUDA_STATE(o)->stream;
    dp_rowprod_kernel<<<(unsigned)rows, DP_THREADS, 0, st>>>(rowprod, A, D, d, p);
    LAUNCH_CHECK("pe_bound_linear", "dp_rowprod_kernel");
    dp_bound_finish_kernel<<<(unsigned)B, DP_FINISH_THREADS, 0, st>>>(bounds, rowprod, T);
    LAUNCH_CHECK("pe_bound_linear", "dp_bound_finish_kernel");
}

void cuda_pe_norm_bias(const nawal_ops *o, float *norms, const float *D, int B, int T, int p) {
    dp_colsq(o, "pe_norm_bias", norms, D, NULL, NULL, NULL, B, T, p);
}

void cuda_pe_norm_layernorm(const nawal_ops *o, float *norms, const float *D, const float *inp, const float *mean,
                            const float *rstd, int B, int T, int C) {
    dp_colsq(o, "pe_norm_layernorm", norms, D, inp, mean, rstd, B, T, C);
}

/* sum_t ||D_b[t]||^2 is the sum of squares of example b's T*C block */
void cuda_pe_norm_rows(const nawal_ops *o, float *norms, const float *D, int B, int T, int C) {
    if (B <= 0 || T <= 0 || C <= 0) return;
    size_t n = (size_t)T * C, piece;
    int pieces = dp_pieces(n, &piece);
    double *part = (double *)cuda_scratch(o, (size_t)B * pieces * sizeof(double));
    dp_dot(o, "pe_norm_rows", norms, part, D, D, n, B);
}

/* ||E_b + H_b||^2 = ||E_b||^2 + 2 <E_b, H_b> + ||H_b||^2 with
 *   ||E_b||^2     = sum_{s,t: tok_s == tok_t} <dres_s, dres_t>   (G_b = dres_b dres_b^T)
 *   2 <E_b, H_b> = 2 sum_{s,t} dlogits_b[s][tok_t] M_b[s][t],  M_b = lnf_b dres_b^T
 *                  (E_b[v] = sum_{t: tok_t = v} dres_t, H_b[v] = sum_s dlogits_b[s][v] lnf_s)
 *   ||H_b||^2     = the linear layer's norm with A = lnf (d = C), D = dlogits (p = V).
 * G_b and M_b by dp_gram (M_b[s][t] = <lnf_s, dres_t>: Y = lnf, X = dres). The
 * first two terms use one scratch call; dp_linear then takes its own, after
 * the kernels reading ours are queued (a regrown scratch syncs first). */
void cuda_pe_norm_tied(const nawal_ops *o, float *norms, const float *dres, const int32_t *tok, const float *lnf,
                       const float *dlogits, int B, int T, int C, int V) {
    const char *op = "pe_norm_tied";
    if (B <= 0 || T <= 0 || C <= 0 || V <= 0) return;
    cuda_state *s = CUDA_STATE(o);
    size_t n = (size_t)T * T, piece;
    int pieces = dp_pieces(n, &piece), group = dp_group(B, 2 * n);
    size_t fbytes = align256((size_t)group * 2 * n * sizeof(float));
    char *scr = (char *)cuda_scratch(o, fbytes + (size_t)group * pieces * sizeof(double));
    float *G = (float *)scr, *M = G + (size_t)group * n;
    double *part = (double *)(scr + fbytes);
    for (int b0 = 0; b0 < B; b0 += group) {
        int nb = B - b0 < group ? B - b0 : group;
        const float *db = dres + (size_t)b0 * T * C, *lb = lnf + (size_t)b0 * T * C;
        dp_gram(o, op, G, db, db, nb, T, C);
        dp_gram(o, op, M, db, lb, nb, T, C);
        dp_tied_kernel<<<dim3(nb, pieces), DP_THREADS, 0, s->stream>>>(part, G, M, dlogits + (size_t)b0 * T * V,
                                                                      tok + (size_t)b0 * T, T, V, piece);
        LAUNCH_CHECK(op, "dp_tied_kernel");
        dp_finish(o, op, norms + b0, part, nb, pieces);
    }
    dp_linear(o, op, norms, lnf, dlogits, B, T, C, V);
}

/* ---- per-example gradients, materialised (the per-example DP method) ---- */

static void pe_colgrad(const nawal_ops *o, const char *op, float *out, float *out_w, size_t stride, const float *D,
                       const float *inp, const float *mean, const float *rstd, int B, int T, int C) {
    if (B <= 0 || T <= 0 || C <= 0) return;
    int tiles = (C + 31) / 32;
    if (tiles > DP_MAX_PIECES) cuda_fatal(op, "pe_colgrad", "more columns than the kernel's grid covers", __FILE__, __LINE__);
    pe_colgrad_kernel<<<dim3(B, tiles), dim3(32, 8), 0, CUDA_STATE(o)->stream>>>(out, out_w, stride, D, inp, mean, rstd,
                                                                                T, C);
    LAUNCH_CHECK(op, "pe_colgrad_kernel");
}

void cuda_pe_grad_linear(const nawal_ops *o, float *dw, float *dbias, size_t stride, const float *dout,
                         const float *inp, int B, int T, int C, int OC, nawal_wlayout layout) {
    if (B <= 0 || T <= 0 || C <= 0 || OC <= 0) return;
    cuda_pe_grad_gemm(o, dw, stride, dout, inp, B, T, C, OC, layout);
    if (dbias) pe_colgrad(o, "pe_grad_linear", dbias, NULL, stride, dout, NULL, NULL, NULL, B, T, OC);
}

void cuda_pe_grad_layernorm(const nawal_ops *o, float *dw, float *db, size_t stride, const float *dout,
                            const float *inp, const float *mean, const float *rstd, int B, int T, int C) {
    pe_colgrad(o, "pe_grad_layernorm", db, dw, stride, dout, inp, mean, rstd, B, T, C);
}

/* one thread per element, the examples in order (nawal_pe_sum_term, built
 * without FMA contraction like the CPU's) */
void cuda_pe_sum(const nawal_ops *o, float *y, const float *X, size_t stride, const float *scales, int B, size_t n) {
    if (B <= 0 || !n) return;
    cuda_map(o, "pe_sum", n, [=] __device__(size_t i) {
        float acc = 0.0f;
        for (int b = 0; b < B; b++) acc = nawal_pe_sum_term(acc, scales[b], X[(size_t)b * stride + i]);
        y[i] += acc;
    });
}

void cuda_scale_examples(const nawal_ops *o, float *x, const float *scales, int B, size_t n) {
    if (B <= 0 || !n) return;
    cuda_map(o, "scale_examples", (size_t)B * n, [=] __device__(size_t i) { x[i] *= scales[i / n]; });
}

/* one Philox block per 4 elements: x[4j + w] gets z[w] of block j (as
 * ops.h); this file is built with --fmad=false, so product and sum are
 * rounded separately, as the CPU backend does */
void cuda_add_noise(const nawal_ops *o, float *x, size_t n, float std, uint64_t key, uint64_t stream) {
    cuda_map(o, "add_noise", (n + 3) / 4, [=] __device__(size_t j) {
        float z[4];
        nawal_philox_gauss4(key, stream, j, &z[0], &z[1], &z[2], &z[3]);
        for (int w = 0; w < 4; w++)
            if (4 * j + w < n) x[4 * j + w] = __fadd_rn(x[4 * j + w], __fmul_rn(std, z[w]));
    });
}
