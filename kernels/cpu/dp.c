/* dp.c - CPU per-example quantities for DP-SGD: squared per-example gradient
 * norms of every kind of parameter tensor, per-example scaling and Gaussian
 * noise (see the "differential privacy" section of ops.h).
 *
 * The norm ops run one example per OpenMP iteration: each iteration writes
 * only norms[b], with its sum kept in double and added once, so there are no
 * races and the result does not depend on the thread count (each Gram entry
 * of the batched products is one dot product; test_cpu_dp_ops compares 1 to
 * 3 threads bit for bit). Each thread owns its scratch, and the small GEMMs
 * inside the loops (oneDNN, through cpu_sgemm) run single-threaded, as in
 * attention.c.
 *
 * Linear layers: ||A_b^T D_b||^2 either by the ghost form
 * sum_{s,t} (A_b A_b^T)_{st} (D_b D_b^T)_{st} (~2 T^2 (d + p) FLOPs; all B
 * examples' Gram matrices in two batched oneDNN products, dnnl_matmul.c,
 * whose rate more than pays for the full squares: the op is 12-15% faster
 * than six per-example sgemms over the Grams' lower block triangles on the
 * tiny config, 1 thread) or by materialising A_b^T D_b in column tiles
 * (~2 T d p FLOPs), whichever is cheaper for the shape. The tied embedding / LM head groups an example's
 * positions by token, which gives E_b's rows directly (||E_b||^2 and the
 * cross term need only the distinct tokens), and reuses the linear path for
 * ||H_b||^2. */
#include "cpu_ops.h"
#include "philox.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* materialised weight-gradient tiles hold at most this many floats (1 MiB),
 * so the scratch stays in L2 and bounded for any d x p (the LM head's C x V) */
#define PE_TILE_FLOATS ((size_t)1 << 18)

/* per-thread scratch, grown on demand */
typedef struct {
    float *f;
    size_t fcap;
    double *d;
    size_t dcap;
    uint64_t *k;
    size_t kcap;
} dp_scratch;

static void *grow(void *p, size_t *cap, size_t n, size_t elem) {
    if (n <= *cap) return p;
    free(p);
    p = malloc(n * elem);
    if (!p) {
        fprintf(stderr, "nawal: out of memory in a DP per-example op (%zu bytes)\n", n * elem);
        abort();
    }
    *cap = n;
    return p;
}
static float *scratch_f(dp_scratch *s, size_t n) { return s->f = grow(s->f, &s->fcap, n, sizeof(float)); }
static double *scratch_d(dp_scratch *s, size_t n) { return s->d = grow(s->d, &s->dcap, n, sizeof(double)); }
static uint64_t *scratch_k(dp_scratch *s, size_t n) { return s->k = grow(s->k, &s->kcap, n, sizeof(uint64_t)); }
static void scratch_free(dp_scratch *s) { free(s->f); free(s->d); free(s->k); }

/* norms[b] += s, one rounding to float */
static void add_norm(float *norms, int b, double s) { norms[b] = (float)((double)norms[b] + s); }

static double sumsq_d(const float *x, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

/* sum a[i] b[i] in double, in 8 independent partial sums (the adds pipeline) */
static double dot_d(const float *a, const float *b, size_t n) {
    double acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] += (double)a[i + l] * b[i + l];
    double sum = 0.0;
    for (; i < n; i++) sum += (double)a[i] * b[i];
    for (int l = 0; l < 8; l++) sum += acc[l];
    return sum;
}

/* the rule of ops.h (and of the CUDA backend): ghost when its two T x T
 * Gram matrices are smaller than the d x p gradient it avoids */
int cpu_pe_ghost_cheaper(int T, int d, int p) {
    return 2.0 * T * T < (double)d * p;
}

/* ||A^T D||_F^2 of one example, A[T][d], D[T][p], materialised */
static double linear_example(const float *A, const float *D, int T, int d, int p, dp_scratch *s) {
    if (T <= 0 || d <= 0 || p <= 0) return 0.0;
    /* W = A^T D, [d][pt] column tiles of it at a time */
    size_t pt = PE_TILE_FLOATS / (size_t)d;
    pt = pt < 16 ? 16 : pt;
    pt = pt > (size_t)p ? (size_t)p : pt;
    float *w = scratch_f(s, (size_t)d * pt);
    double sum = 0.0;
    for (int p0 = 0; p0 < p; p0 += (int)pt) {
        int n = p - p0 < (int)pt ? p - p0 : (int)pt;
        cpu_sgemm('T', 'N', d, n, T, 1.0f, A, d, D + p0, p, 0.0f, w, n);
        sum += sumsq_d(w, (size_t)d * n);
    }
    return sum;
}

/* the B Gram matrices X_b X_b^T (T x T) of X[B][T][K] as one batched product */
static cpu_mm_shape gram_shape(int B, int T, int K) {
    long t = T, k = K;
    return (cpu_mm_shape){ .bf16 = 0, .batch = B, .M = t, .N = t, .K = k, .sa = { t * k, k, 1 }, .sb = { t * k, 1, k },
                           .sc = { t * t, t, 1 }, .beta_one = 0 };
}

/* sums[b] = ||A_b^T D_b||_F^2 in double for every example, A[B][T][d],
 * D[B][T][p]. Ghost: sum(A_b A_b^T o D_b D_b^T), the Grams in fp32, their
 * elementwise product summed in double; else materialised per example. */
static void linear_sums(double *sums, const float *A, const float *D, int B, int T, int d, int p, int ghost) {
    if (B <= 0) return;
    if (T <= 0 || d <= 0 || p <= 0) {
        for (int b = 0; b < B; b++) sums[b] = 0.0;
        return;
    }
    if (ghost) {
        size_t TT = (size_t)T * T;
        cpu_mm_ws *w = cpu_mm_take();
        float *ga = cpu_mm_buffer(w, 0, (size_t)B * TT * sizeof(float));
        float *gd = cpu_mm_buffer(w, 1, (size_t)B * TT * sizeof(float));
        cpu_mm_shape sa = gram_shape(B, T, d), sd = gram_shape(B, T, p);
        cpu_mm_run(w, &sa, A, A, ga);
        cpu_mm_run(w, &sd, D, D, gd);
        #pragma omp parallel for schedule(static, 1)
        for (int b = 0; b < B; b++) sums[b] = dot_d(ga + (size_t)b * TT, gd + (size_t)b * TT, TT);
        cpu_mm_give(w);
        return;
    }
    #pragma omp parallel
    {
        dp_scratch s = { 0 };
        #pragma omp for schedule(static, 1)
        for (int b = 0; b < B; b++) sums[b] = linear_example(A + (size_t)b * T * d, D + (size_t)b * T * p, T, d, p, &s);
        scratch_free(&s);
    }
}

static double *sums_new(int B) {
    double *s = malloc((size_t)(B > 0 ? B : 1) * sizeof(double));
    if (!s) {
        fprintf(stderr, "nawal: out of memory in a DP per-example op\n");
        abort();
    }
    return s;
}

void cpu_pe_norm_linear_path(float *norms, const float *A, const float *D, int B, int T, int d, int p,
                             cpu_pe_path path) {
    int ghost = path == CPU_PE_AUTO ? cpu_pe_ghost_cheaper(T, d, p) : path == CPU_PE_GHOST;
    double *sums = sums_new(B);
    linear_sums(sums, A, D, B, T, d, p, ghost);
    for (int b = 0; b < B; b++) add_norm(norms, b, sums[b]);
    free(sums);
}

/* (sum_t ||A_b[t]|| ||D_b[t]||)^2 per example, rows in order, in double */
void cpu_pe_bound_linear(const nawal_ops *o, float *bounds, const float *A, const float *D, int B, int T, int d, int p) {
    (void)o;
    #pragma omp parallel for schedule(static, 1)
    for (int b = 0; b < B; b++) {
        double s = 0.0;
        for (int t = 0; t < T; t++) {
            size_t r = (size_t)b * T + t;
            s += sqrt(sumsq_d(A + r * d, (size_t)d)) * sqrt(sumsq_d(D + r * p, (size_t)p));
        }
        add_norm(bounds, b, s * s);
    }
}

void cpu_pe_norm_linear(const nawal_ops *o, float *norms, const float *A, const float *D, int B, int T, int d, int p) {
    (void)o;
    cpu_pe_norm_linear_path(norms, A, D, B, T, d, p, CPU_PE_AUTO);
}

void cpu_example_colsums(double *cb, double *cw, const float *D, const float *inp, const float *mean,
                         const float *rstd, int T, int C) {
    memset(cb, 0, (size_t)C * sizeof(double));
    if (inp) memset(cw, 0, (size_t)C * sizeof(double));
    for (int t = 0; t < T; t++) {
        const float *dr = D + (size_t)t * C;
        for (int c = 0; c < C; c++) cb[c] += dr[c];
        if (inp) {
            const float *x = inp + (size_t)t * C;
            double m = mean[t], r = rstd[t];
            for (int c = 0; c < C; c++) cw[c] += (double)dr[c] * ((x[c] - m) * r);
        }
    }
}

/* One example's column sums of D[T][C]: ||sum_t D[t]||^2, plus
 * ||sum_t D[t] * xhat[t]||^2 when inp is given (layernorm's weight). */
static double colsums_example(const float *D, const float *inp, const float *mean, const float *rstd,
                              int T, int C, dp_scratch *s) {
    double *cb = scratch_d(s, (size_t)2 * C), *cw = cb + C;
    cpu_example_colsums(cb, cw, D, inp, mean, rstd, T, C);
    double sum = 0.0;
    for (int c = 0; c < C; c++) sum += cb[c] * cb[c] + (inp ? cw[c] * cw[c] : 0.0);
    return sum;
}

static void colsums_norms(float *norms, const float *D, const float *inp, const float *mean, const float *rstd,
                          int B, int T, int C) {
    #pragma omp parallel
    {
        dp_scratch s = { 0 };
        #pragma omp for schedule(static, 1)
        for (int b = 0; b < B; b++) {
            size_t r0 = (size_t)b * T;
            add_norm(norms, b, colsums_example(D + r0 * C, inp ? inp + r0 * C : NULL, inp ? mean + r0 : NULL,
                                               inp ? rstd + r0 : NULL, T, C, &s));
        }
        scratch_free(&s);
    }
}

void cpu_pe_norm_bias(const nawal_ops *o, float *norms, const float *D, int B, int T, int p) {
    (void)o;
    colsums_norms(norms, D, NULL, NULL, NULL, B, T, p);
}

void cpu_pe_norm_layernorm(const nawal_ops *o, float *norms, const float *D, const float *inp,
                           const float *mean, const float *rstd, int B, int T, int C) {
    (void)o;
    colsums_norms(norms, D, inp, mean, rstd, B, T, C);
}

void cpu_pe_norm_rows(const nawal_ops *o, float *norms, const float *D, int B, int T, int C) {
    (void)o;
    #pragma omp parallel for schedule(static, 1)
    for (int b = 0; b < B; b++) { /* dot_d's independent sums: an example can be a whole gradient (per-example DP) */
        const float *x = D + (size_t)b * T * C;
        add_norm(norms, b, dot_d(x, x, (size_t)T * C));
    }
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* ||E + H||^2 of one example = ||E||^2 + 2 <E, H> + ||H||^2. E's nonzero
 * rows are e_v = sum_{t: tok_t = v} dres_t for the U distinct tokens v of the
 * example; H[v] = sum_s dlogits[s][v] lnf[s], so
 * <E, H> = sum_v sum_s dlogits[s][v] <lnf[s], e_v>: M = lnf e^T [T][U]. */
static double tied_example(const float *dres, const int32_t *tok, const float *lnf, const float *dlogits,
                           int T, int C, int V, dp_scratch *s) {
    if (T <= 0 || C <= 0) return 0.0;
    /* positions sorted by token: key = token << 32 | position */
    uint64_t *key = scratch_k(s, (size_t)T);
    for (int t = 0; t < T; t++) key[t] = (uint64_t)(uint32_t)tok[t] << 32 | (uint32_t)t;
    qsort(key, (size_t)T, sizeof *key, cmp_u64);
    double *acc = scratch_d(s, (size_t)C);
    float *e = scratch_f(s, (size_t)T * C + (size_t)T * T);
    double e2 = 0.0;
    int U = 0;
    for (int i = 0; i < T;) {
        uint32_t v = (uint32_t)(key[i] >> 32);
        memset(acc, 0, (size_t)C * sizeof(double));
        for (; i < T && (uint32_t)(key[i] >> 32) == v; i++) {
            const float *r = dres + (size_t)(uint32_t)key[i] * C;
            for (int c = 0; c < C; c++) acc[c] += r[c];
        }
        float *eu = e + (size_t)U * C;
        for (int c = 0; c < C; c++) { e2 += acc[c] * acc[c]; eu[c] = (float)acc[c]; }
        key[U++] = v; /* key[0..U) now holds the distinct tokens (U <= i) */
    }
    float *m = e + (size_t)T * C;
    cpu_sgemm('N', 'T', T, U, C, 1.0f, lnf, C, e, C, 0.0f, m, U);
    double cross = 0.0;
    for (int t = 0; t < T; t++) {
        const float *dl = dlogits + (size_t)t * V, *mr = m + (size_t)t * U;
        for (int u = 0; u < U; u++) cross += (double)dl[key[u]] * mr[u];
    }
    return e2 + 2.0 * cross; /* + ||H_b||^2, which the caller adds */
}

void cpu_pe_norm_tied(const nawal_ops *o, float *norms, const float *dres, const int32_t *tok, const float *lnf,
                      const float *dlogits, int B, int T, int C, int V) {
    (void)o;
    double *h2 = sums_new(B); /* the head's ||H_b||^2, all examples at once */
    linear_sums(h2, lnf, dlogits, B, T, C, V, cpu_pe_ghost_cheaper(T, C, V));
    #pragma omp parallel
    {
        dp_scratch s = { 0 };
        #pragma omp for schedule(static, 1)
        for (int b = 0; b < B; b++) {
            size_t r0 = (size_t)b * T;
            add_norm(norms, b, tied_example(dres + r0 * C, tok + r0, lnf + r0 * C, dlogits + r0 * V, T, C, V, &s) + h2[b]);
        }
        scratch_free(&s);
    }
    free(h2);
}

static void scale_range(float *restrict x, float a, size_t n) { for (size_t i = 0; i < n; i++) x[i] *= a; }

void cpu_scale_examples(const nawal_ops *o, float *x, const float *scales, int B, size_t n) {
    (void)o;
    size_t total = (size_t)(B > 0 ? B : 0) * n;
    if (n == 0) return;
    #pragma omp parallel
    {
        size_t lo, hi;
        cpu_thread_range(total, &lo, &hi);
        /* this thread's range crosses example boundaries at multiples of n */
        while (lo < hi) {
            size_t b = lo / n, end = (b + 1) * n < hi ? (b + 1) * n : hi;
            scale_range(x + lo, scales[b], end - lo);
            lo = end;
        }
    }
}

/* blocks [lo, hi) of 4 elements: x[4j + w] += std * z_w of Philox block j */
static void noise_blocks(float *restrict x, size_t lo, size_t hi, float std, uint64_t key, uint64_t stream) {
    #pragma omp simd
    for (size_t j = lo; j < hi; j++) {
        float z0, z1, z2, z3;
        nawal_philox_gauss4(key, stream, j, &z0, &z1, &z2, &z3);
        /* products and sums rounded separately: ISO C, no contraction */
        float a0 = std * z0, a1 = std * z1, a2 = std * z2, a3 = std * z3;
        x[4 * j] += a0;
        x[4 * j + 1] += a1;
        x[4 * j + 2] += a2;
        x[4 * j + 3] += a3;
    }
}

void cpu_add_noise(const nawal_ops *o, float *x, size_t n, float std, uint64_t key, uint64_t stream) {
    (void)o;
    size_t blocks = n / 4;
    /* whole blocks of 4 in parallel (a plain loop GCC can vectorise), then the tail */
    #pragma omp parallel
    {
        size_t lo, hi;
        cpu_thread_range(blocks, &lo, &hi);
        noise_blocks(x, lo, hi, std, key, stream);
    }
    if (n % 4) {
        float z[4];
        nawal_philox_gauss4(key, stream, blocks, &z[0], &z[1], &z[2], &z[3]);
        for (size_t i = blocks * 4; i < n; i++) {
            float a = std * z[i % 4]; /* product and sum rounded separately: ISO C, no contraction */
            x[i] += a;
        }
    }
}
