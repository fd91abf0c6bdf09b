/* test_cpu_dp_ops.c - the CPU backend's DP-SGD per-example ops (ops.h,
 * "differential privacy") against independent brute-force references in
 * double precision, on fresh random inputs (the seed is printed; replay a
 * failure with NAWAL_TEST_SEED) and awkward shapes.
 *
 * The references take the definitions literally: the linear layer's
 * per-example gradient A_b^T D_b is materialised in double; the tied
 * embedding / LM-head gradient is built as the dense V x C matrices E_b and
 * H_b, so ||E_b + H_b||^2 checks the op's cross term independently. Norm
 * outputs are "+=": they are pre-filled with random values; every output
 * carries guard words after its end that must survive.
 *
 * Norm tolerance. Each norm is a sum of products of inputs; whatever order
 * the op sums them in (Gram matrices, a materialised gradient, column sums),
 * every fp32 rounding it commits is at most 2^-24 of a partial sum, and every
 * partial sum is bounded by the same expression with all inputs replaced by
 * their absolute values: S_b = ||sum_t |a_t| |d_t|^T||_F^2 for a linear
 * layer, and likewise for the others. Rounding errors behave like a random
 * walk, so the error is ~sqrt(K) 2^-24 S_b for dot products of length
 * K <= 600 here (<= 1.5e-6 S_b). We allow 1e-5 S_b, plus one fp32 rounding
 * of the accumulated result (2^-23 of it). For random data S_b is at most
 * ~0.4 T times the norm (T <= 60 here), so the bound stays below ~3e-4 of
 * the norm, while a real bug (a missing position, a wrong example offset or
 * stride, a missing cross term) is off by >= 1/T ~ 2e-2 of it. */
#include <criterion/criterion.h>
#include <omp.h>
#include <stdbool.h>
#include <string.h>
#include "ops.h"
#include "cpu/cpu_ops.h"
#include "philox.h"
#include "test_util.h"

#include "ops_test_util.h"

#define TOL 1e-5

/* normal entries, each row of `row` entries with its own magnitude
 * e^U(-1,1), so rows are not interchangeable */
static float *hrows(size_t rows, size_t row) {
    float *p = hf(rows * row);
    for (size_t r = 0; r < rows; r++) {
        float s = (float)exp(unif(-1.0, 1.0));
        for (size_t i = 0; i < row; i++) p[r * row + i] = s * nrm();
    }
    return p;
}

/* random positive norms to accumulate into (they are sums of squares) */
static float *prefill(int B, const double *ref) {
    float *pre = hf((size_t)B);
    for (int b = 0; b < B; b++) pre[b] = (float)(unif(0.0, 2.0) * (ref[b] + 1.0));
    return pre;
}

/* norms[b] == pre[b] + ref[b] to TOL * S[b] plus one fp32 rounding */
static bool check_norms(const char *what, const float *got, const float *pre, const double *ref, const double *S,
                        int B) {
    bool ok = true;
    for (int b = 0; b < B; b++) {
        double want = (double)pre[b] + ref[b], bound = TOL * S[b] + 0x1p-23 * fabs(want);
        double e = fabs((double)got[b] - want);
        if (!(e <= bound)) {
            cr_expect(0, "%s: example %d: %.9g, want %.9g + %.9g = %.9g (error %.3g > bound %.3g) (seed %llu)", what, b,
                      got[b], pre[b], ref[b], want, e, bound, SEED);
            ok = false;
        }
    }
    return ok;
}

/* runs one norm op (fn with its arguments bound by the caller) on norms
 * pre-filled with pre, checks the result and the guard words */
#define RUN_NORM_OP(what, B, pre, ref, S, call)                                                                        \
    do {                                                                                                               \
        float *norms = dnew(pre, (size_t)(B));                                                                         \
        call;                                                                                                          \
        float *got_ = hf((size_t)(B));                                                                                 \
        dget(got_, norms, (size_t)(B));                                                                                \
        check_norms(what, got_, pre, ref, S, B);                                                                       \
        ddone(norms, (size_t)(B), what);                                                                               \
        free(got_);                                                                                                    \
    } while (0)

/* ======================================================================
 * references
 * ====================================================================== */

/* ref[b] = ||A_b^T D_b||_F^2 with A_b^T D_b materialised in double; S[b]
 * the same with |A|, |D| (the tolerance scale, see the top) */
static void ref_linear(double *ref, double *S, const float *A, const float *D, int B, int T, int d, int p) {
    double *w = hd((size_t)d * p), *wa = hd((size_t)d * p);
    for (int b = 0; b < B; b++) {
        memset(w, 0, (size_t)d * p * sizeof(double));
        memset(wa, 0, (size_t)d * p * sizeof(double));
        for (int t = 0; t < T; t++) {
            const float *a = A + ((size_t)b * T + t) * d, *g = D + ((size_t)b * T + t) * p;
            for (int i = 0; i < d; i++)
                for (int j = 0; j < p; j++) {
                    w[(size_t)i * p + j] += (double)a[i] * g[j];
                    wa[(size_t)i * p + j] += fabs((double)a[i] * g[j]);
                }
        }
        ref[b] = S[b] = 0.0;
        for (size_t k = 0; k < (size_t)d * p; k++) { ref[b] += w[k] * w[k]; S[b] += wa[k] * wa[k]; }
    }
    free(w);
    free(wa);
}

/* ======================================================================
 * pe_norm_linear: ghost and materialised paths, forced and chosen
 * ====================================================================== */

Test(cpu_dp_ops, pe_norm_linear) {
    start("cpu_dp_ops/pe_norm_linear");
    /* B, T, d, p. Ghost is cheaper when T (d + p) < d p: small T, wide layers
     * (rows 0, 3: d p = 310200 floats also makes the materialised path tile
     * its columns); materialising when T is large for d, p (rows 1, 2, 4, 5) */
    int shapes[12][4] = { { 3, 5, 67, 131 }, { 2, 45, 13, 19 }, { 1, 1, 1, 1 }, { 2, 7, 600, 517 },
                          { 4, 33, 1, 97 }, { 5, 60, 23, 3 } };
    for (int s = 6; s < 12; s++) {
        shapes[s][0] = rnd(1, 5); shapes[s][1] = rnd(1, 60); shapes[s][2] = rnd(1, 200); shapes[s][3] = rnd(1, 200);
    }
    int chose[2] = { 0, 0 }; /* shapes where auto picks materialise / ghost */
    for (int s = 0; s < 12; s++) {
        int B = shapes[s][0], T = shapes[s][1], d = shapes[s][2], p = shapes[s][3];
        float *A = hrows((size_t)B * T, (size_t)d), *D = hrows((size_t)B * T, (size_t)p);
        double *ref = hd((size_t)B), *S = hd((size_t)B);
        ref_linear(ref, S, A, D, B, T, d, p);
        float *dA = dnew(A, (size_t)B * T * d), *dD = dnew(D, (size_t)B * T * p);
        int ghost = cpu_pe_ghost_cheaper(T, d, p);
        chose[ghost]++;
        static const char *names[3] = { "auto", "ghost", "materialise" };
        for (int path = 0; path < 3; path++) {
            char what[160];
            snprintf(what, sizeof what, "pe_norm_linear %s%s B=%d T=%d d=%d p=%d", names[path],
                     path ? "" : (ghost ? " (ghost)" : " (materialise)"), B, T, d, p);
            float *pre = prefill(B, ref);
            if (path == CPU_PE_AUTO) RUN_NORM_OP(what, B, pre, ref, S, O->pe_norm_linear(O, norms, dA, dD, B, T, d, p));
            else RUN_NORM_OP(what, B, pre, ref, S, cpu_pe_norm_linear_path(norms, dA, dD, B, T, d, p, (cpu_pe_path)path));
            free(pre);
        }
        ddone(dA, (size_t)B * T * d, "pe_norm_linear (input A untouched)");
        ddone(dD, (size_t)B * T * p, "pe_norm_linear (input D untouched)");
        free(A); free(D); free(ref); free(S);
    }
    cr_expect(chose[0] >= 4 && chose[1] >= 2, "auto chose materialise on %d shapes and ghost on %d: both paths must run",
              chose[0], chose[1]);
    /* the choice itself is ops.h's rule: ghost when 2 T^2 < d p (768 x 3072: T <= 1086) */
    cr_expect(cpu_pe_ghost_cheaper(1087, 768, 3072) == 0 && cpu_pe_ghost_cheaper(64, 768, 3072) == 1 &&
              cpu_pe_ghost_cheaper(1086, 768, 3072) == 1 && cpu_pe_ghost_cheaper(1024, 768, 2304) == 0,
              "ghost/materialise choice is not 2 T^2 < d p");
}

/* ======================================================================
 * pe_bound_linear: (sum_t ||A_b[t]|| ||D_b[t]||)^2, and that it bounds how
 * far rounding the operands moves the weight gradient
 * ====================================================================== */

Test(cpu_dp_ops, pe_bound_linear) {
    start("cpu_dp_ops/pe_bound_linear");
    for (int s = 0; s < 6; s++) {
        int B = rnd(1, 5), T = rnd(1, 40), d = rnd(1, 90), p = rnd(1, 90);
        if (s == 0) B = T = d = p = 1;
        float *A = hrows((size_t)B * T, (size_t)d), *D = hrows((size_t)B * T, (size_t)p);
        double *ref = hd((size_t)B), *S = hd((size_t)B);
        for (int b = 0; b < B; b++) {
            double sum = 0.0, sa = 0.0;
            for (int t = 0; t < T; t++) {
                double na = 0.0, nd = 0.0;
                for (int i = 0; i < d; i++) na += (double)A[((size_t)b * T + t) * d + i] * A[((size_t)b * T + t) * d + i];
                for (int i = 0; i < p; i++) nd += (double)D[((size_t)b * T + t) * p + i] * D[((size_t)b * T + t) * p + i];
                sum += sqrt(na) * sqrt(nd);
                sa += sqrt(na) * sqrt(nd);
            }
            ref[b] = sum * sum;
            S[b] = sa * sa;
        }
        float *dA = dnew(A, (size_t)B * T * d), *dD = dnew(D, (size_t)B * T * p), *pre = prefill(B, ref);
        char what[96];
        snprintf(what, sizeof what, "pe_bound_linear B=%d T=%d d=%d p=%d", B, T, d, p);
        RUN_NORM_OP(what, B, pre, ref, S, O->pe_bound_linear(O, norms, dA, dD, B, T, d, p));
        /* the property it is for: rounding every entry of A and D by at most
         * a factor (1 +- u) moves ||A_b^T D_b|| by at most (2u + u^2) sqrt(bound) */
        double u = 0x1p-8, *w = hd((size_t)d * p), *wr = hd((size_t)d * p);
        for (int b = 0; b < B; b++) {
            memset(w, 0, (size_t)d * p * sizeof(double));
            memset(wr, 0, (size_t)d * p * sizeof(double));
            for (int t = 0; t < T; t++) {
                const float *a = A + ((size_t)b * T + t) * d, *g = D + ((size_t)b * T + t) * p;
                for (int i = 0; i < d; i++)
                    for (int j = 0; j < p; j++) {
                        /* each factor moved by u, the sign varying with i and j */
                        w[(size_t)i * p + j] += (double)a[i] * g[j];
                        wr[(size_t)i * p + j] += (double)a[i] * (1.0 + u * (i % 2 ? 1 : -1)) * g[j] * (1.0 + u * (j % 3 ? 1 : -1));
                    }
            }
            double diff = 0.0;
            for (size_t k = 0; k < (size_t)d * p; k++) diff += (w[k] - wr[k]) * (w[k] - wr[k]);
            cr_expect(sqrt(diff) <= (2 * u + u * u) * sqrt(ref[b]) * (1 + 1e-12),
                      "%s: a rounding moved example %d by %.6g > bound %.6g (seed %llu)", what, b, sqrt(diff),
                      (2 * u + u * u) * sqrt(ref[b]), SEED);
        }
        free(w); free(wr);
        ddone(dA, (size_t)B * T * d, "pe_bound_linear (A untouched)");
        ddone(dD, (size_t)B * T * p, "pe_bound_linear (D untouched)");
        free(A); free(D); free(ref); free(S); free(pre);
    }
}

/* ======================================================================
 * pe_norm_bias, pe_norm_layernorm, pe_norm_rows
 * ====================================================================== */

Test(cpu_dp_ops, pe_norm_bias_layernorm_rows) {
    start("cpu_dp_ops/pe_norm_small");
    int shapes[8][3] = { { 3, 17, 37 }, { 1, 1, 1 }, { 5, 1, 130 }, { 2, 61, 1 } };
    for (int s = 4; s < 8; s++) { shapes[s][0] = rnd(1, 6); shapes[s][1] = rnd(1, 60); shapes[s][2] = rnd(1, 300); }
    for (int s = 0; s < 8; s++) {
        int B = shapes[s][0], T = shapes[s][1], C = shapes[s][2];
        size_t N = (size_t)B * T, n = N * C;
        float *D = hrows(N, (size_t)C), *inp = hrows(N, (size_t)C), *mean = hf(N), *rstd = hf(N);
        /* mean/rstd as layernorm_fwd saves them (the op must use them as
         * given, whatever they are: perturb them a little) */
        for (size_t r = 0; r < N; r++) {
            double m = 0.0, v = 0.0;
            for (int c = 0; c < C; c++) m += inp[r * C + c];
            m /= C;
            for (int c = 0; c < C; c++) v += (inp[r * C + c] - m) * (inp[r * C + c] - m);
            mean[r] = (float)(m + 0.1 * nrm());
            rstd[r] = (float)(unif(0.8, 1.2) / sqrt(v / C + 1e-5));
        }
        double *rb = hd((size_t)B), *sb = hd((size_t)B), *rl = hd((size_t)B), *sl = hd((size_t)B);
        double *rr = hd((size_t)B);
        double *cb = hd((size_t)C), *cba = hd((size_t)C), *cw = hd((size_t)C), *cwa = hd((size_t)C);
        for (int b = 0; b < B; b++) {
            memset(cb, 0, (size_t)C * sizeof(double)); memset(cba, 0, (size_t)C * sizeof(double));
            memset(cw, 0, (size_t)C * sizeof(double)); memset(cwa, 0, (size_t)C * sizeof(double));
            for (int t = 0; t < T; t++) {
                size_t r = (size_t)b * T + t;
                for (int c = 0; c < C; c++) {
                    double g = D[r * C + c], xh = ((double)inp[r * C + c] - mean[r]) * rstd[r];
                    cb[c] += g; cba[c] += fabs(g);
                    cw[c] += g * xh; cwa[c] += fabs(g * xh);
                    rr[b] += g * g;
                }
            }
            for (int c = 0; c < C; c++) {
                rb[b] += cb[c] * cb[c]; sb[b] += cba[c] * cba[c];
                rl[b] += cb[c] * cb[c] + cw[c] * cw[c]; sl[b] += cba[c] * cba[c] + cwa[c] * cwa[c];
            }
        }
        float *dD = dnew(D, n), *dinp = dnew(inp, n), *dmean = dnew(mean, N), *drstd = dnew(rstd, N);
        char what[128];
        float *pre = prefill(B, rb);
        snprintf(what, sizeof what, "pe_norm_bias B=%d T=%d p=%d", B, T, C);
        RUN_NORM_OP(what, B, pre, rb, sb, O->pe_norm_bias(O, norms, dD, B, T, C));
        free(pre);
        pre = prefill(B, rl);
        snprintf(what, sizeof what, "pe_norm_layernorm B=%d T=%d C=%d", B, T, C);
        RUN_NORM_OP(what, B, pre, rl, sl, O->pe_norm_layernorm(O, norms, dD, dinp, dmean, drstd, B, T, C));
        free(pre);
        /* all terms positive: the scale is the norm itself */
        pre = prefill(B, rr);
        snprintf(what, sizeof what, "pe_norm_rows B=%d T=%d C=%d", B, T, C);
        RUN_NORM_OP(what, B, pre, rr, rr, O->pe_norm_rows(O, norms, dD, B, T, C));
        free(pre);
        ddone(dD, n, "pe_norm_* (input D untouched)");
        ddone(dinp, n, "pe_norm_layernorm (input inp untouched)");
        ddone(dmean, N, "pe_norm_layernorm (input mean untouched)");
        ddone(drstd, N, "pe_norm_layernorm (input rstd untouched)");
        free(D); free(inp); free(mean); free(rstd);
        free(rb); free(sb); free(rl); free(sl); free(rr); free(cb); free(cba); free(cw); free(cwa);
    }
}

/* ======================================================================
 * pe_norm_tied: embedding lookup + LM head, cross term included
 * ====================================================================== */

Test(cpu_dp_ops, pe_norm_tied) {
    start("cpu_dp_ops/pe_norm_tied");
    /* B, T, C, V. ||H_b||^2 goes the ghost way when T (C + V) < C V (rows 0,
     * 2), materialised otherwise (rows 1, 3, 4); row 3 has one token only */
    int shapes[9][4] = { { 3, 4, 37, 101 }, { 2, 40, 9, 53 }, { 2, 13, 64, 301 }, { 3, 30, 5, 1 }, { 1, 1, 1, 1 } };
    for (int s = 5; s < 9; s++) {
        shapes[s][0] = rnd(1, 4); shapes[s][1] = rnd(1, 50); shapes[s][2] = rnd(1, 70); shapes[s][3] = rnd(1, 400);
    }
    int chose[2] = { 0, 0 }, repeats = 0, big_cross = 0;
    for (int s = 0; s < 9; s++) {
        int B = shapes[s][0], T = shapes[s][1], C = shapes[s][2], V = shapes[s][3];
        size_t N = (size_t)B * T;
        chose[cpu_pe_ghost_cheaper(T, C, V)]++;
        /* tokens from a small pool per example, so they repeat (||E_b||^2
         * then has off-diagonal pairs) */
        int32_t *tok = xcalloc(N, sizeof(int32_t));
        for (int b = 0; b < B; b++) {
            int pool[8], np = rnd(1, 8);
            for (int k = 0; k < np; k++) pool[k] = rnd(0, V - 1);
            for (int t = 0; t < T; t++) tok[(size_t)b * T + t] = pool[rnd(0, np - 1)];
            for (int t = 0; t < T; t++)
                for (int u = 0; u < t; u++) repeats += tok[(size_t)b * T + t] == tok[(size_t)b * T + u];
        }
        /* odd shapes: dres correlated with lnf and dlogits small except at
         * the example's own tokens (as p - onehot is), so <E_b, H_b> is
         * comparable to the norm */
        bool corr = s % 2 == 1;
        float *lnf = hrows(N, (size_t)C), *dres = hrows(N, (size_t)C), *dl = hrows(N, (size_t)V);
        if (corr)
            for (size_t r = 0; r < N; r++) {
                for (int c = 0; c < C; c++) dres[r * C + c] = 0.8f * lnf[r * C + c] + 0.3f * dres[r * C + c];
                for (int v = 0; v < V; v++) dl[r * V + v] *= 0.05f;
                dl[r * V + tok[r]] -= 3.0f;
            }
        /* dense E_b, H_b [V][C] in double, and their absolute versions */
        double *ref = hd((size_t)B), *S = hd((size_t)B), *cross = hd((size_t)B);
        size_t vc = (size_t)V * C;
        double *E = hd(vc), *H = hd(vc), *Ea = hd(vc), *Ha = hd(vc);
        for (int b = 0; b < B; b++) {
            memset(E, 0, vc * sizeof(double)); memset(H, 0, vc * sizeof(double));
            memset(Ea, 0, vc * sizeof(double)); memset(Ha, 0, vc * sizeof(double));
            for (int t = 0; t < T; t++) {
                size_t r = (size_t)b * T + t;
                for (int c = 0; c < C; c++) {
                    E[(size_t)tok[r] * C + c] += dres[r * C + c];
                    Ea[(size_t)tok[r] * C + c] += fabs(dres[r * C + c]);
                }
                for (int v = 0; v < V; v++)
                    for (int c = 0; c < C; c++) {
                        double h = (double)dl[r * V + v] * lnf[r * C + c];
                        H[(size_t)v * C + c] += h;
                        Ha[(size_t)v * C + c] += fabs(h);
                    }
            }
            for (size_t k = 0; k < vc; k++) {
                ref[b] += (E[k] + H[k]) * (E[k] + H[k]);
                S[b] += (Ea[k] + Ha[k]) * (Ea[k] + Ha[k]);
                cross[b] += 2.0 * E[k] * H[k];
            }
            /* the cross term is far beyond the tolerance: leaving it out fails */
            big_cross += fabs(cross[b]) > 100.0 * TOL * S[b];
        }
        float *d_dres = dnew(dres, N * C), *d_lnf = dnew(lnf, N * C), *d_dl = dnew(dl, N * V);
        int32_t *d_tok = O->alloc(O, N * sizeof(int32_t));
        cr_assert(d_tok != NULL);
        O->upload(O, d_tok, tok, N * sizeof(int32_t));
        char what[128];
        snprintf(what, sizeof what, "pe_norm_tied B=%d T=%d C=%d V=%d%s", B, T, C, V, corr ? " correlated" : "");
        float *pre = prefill(B, ref);
        RUN_NORM_OP(what, B, pre, ref, S, O->pe_norm_tied(O, norms, d_dres, d_tok, d_lnf, d_dl, B, T, C, V));
        ddone(d_dres, N * C, "pe_norm_tied (input dres untouched)");
        ddone(d_lnf, N * C, "pe_norm_tied (input lnf untouched)");
        ddone(d_dl, N * V, "pe_norm_tied (input dlogits untouched)");
        O->free(O, d_tok);
        free(pre); free(tok); free(lnf); free(dres); free(dl);
        free(ref); free(S); free(cross); free(E); free(H); free(Ea); free(Ha);
    }
    cr_expect(chose[0] >= 3 && chose[1] >= 2, "||H||^2 materialised on %d shapes, ghost on %d: both must run",
              chose[0], chose[1]);
    cr_expect(repeats > 0, "no example had a repeated token (seed %llu)", SEED);
    cr_expect(big_cross >= 4, "only %d examples had a cross term far above the tolerance (seed %llu)", big_cross, SEED);
}

/* ======================================================================
 * thread-count independence of the norms
 * ====================================================================== */

Test(cpu_dp_ops, norms_do_not_depend_on_thread_count) {
    start("cpu_dp_ops/threads");
    int B = 5, T = 23, C = 31, V = 97;
    size_t N = (size_t)B * T;
    float *A = hrows(N, (size_t)C), *D = hrows(N, (size_t)V), *R = hrows(N, (size_t)C);
    int32_t *tok = xcalloc(N, sizeof(int32_t));
    for (size_t r = 0; r < N; r++) tok[r] = rnd(0, 9);
    float *dA = dnew(A, N * C), *dD = dnew(D, N * V), *dR = dnew(R, N * C);
    int32_t *dtok = O->alloc(O, N * sizeof(int32_t));
    cr_assert(dtok != NULL);
    O->upload(O, dtok, tok, N * sizeof(int32_t));
    int saved = omp_get_max_threads();
    float first[4][5];
    for (int nt = 1; nt <= 4; nt++) {
        omp_set_num_threads(nt);
        float got[4][5];
        for (int k = 0; k < 4; k++) {
            float *norms = dnew(NULL, (size_t)B);
            O->fill(O, norms, 0.0f, (size_t)B);
            if (k < 2) cpu_pe_norm_linear_path(norms, dA, dD, B, T, C, V, k ? CPU_PE_MATERIALISE : CPU_PE_GHOST);
            else if (k == 2) O->pe_norm_tied(O, norms, dR, dtok, dA, dD, B, T, C, V);
            else O->pe_norm_layernorm(O, norms, dR, dA, dA, dA + N, B, T, C); /* any mean/rstd will do */
            dget(got[k], norms, (size_t)B);
            ddone(norms, (size_t)B, "norms");
        }
        if (nt == 1) memcpy(first, got, sizeof first);
        else
            cr_expect(memcmp(first, got, sizeof got) == 0, "norms differ between 1 and %d threads (seed %llu)", nt, SEED);
    }
    omp_set_num_threads(saved);
    O->free(O, dA); O->free(O, dD); O->free(O, dR); O->free(O, dtok);
    free(A); free(D); free(R); free(tok);
}

/* ======================================================================
 * scale_examples
 * ====================================================================== */

Test(cpu_dp_ops, scale_examples) {
    start("cpu_dp_ops/scale_examples");
    /* B, n: per-thread ranges (blocks of 64) that start and end inside
     * examples, examples shorter than a block, B = 0 and n = 0 */
    size_t shapes[9][2] = { { 3, 1001 }, { 7, 1 }, { 1, 64 }, { 5, 63 }, { 0, 10 }, { 4, 0 }, { 2, 100003 } };
    for (int s = 7; s < 9; s++) { shapes[s][0] = (size_t)rnd(1, 9); shapes[s][1] = (size_t)rnd(1, 5000); }
    int saved = omp_get_max_threads();
    for (int nt = 1; nt <= 3; nt++) {
        omp_set_num_threads(nt);
        for (int s = 0; s < 9; s++) {
            int B = (int)shapes[s][0];
            size_t n = shapes[s][1], m = (size_t)B * n;
            float *x = hrows(m, 1), *sc = hf((size_t)B + 1), *got = hf(m);
            for (int b = 0; b < B; b++) sc[b] = b % 4 == 3 ? 0.0f : (float)unif(-2.0, 2.0);
            float *dx = dnew(x, m), *dsc = dnew(sc, (size_t)B);
            O->scale_examples(O, dx, dsc, B, n);
            dget(got, dx, m);
            /* x * s is one correctly rounded fp32 product: exactly the double
             * product (exact: 24 + 24 bits) rounded to float */
            for (size_t i = 0; i < m; i++) {
                float want = (float)((double)x[i] * sc[i / n]);
                if (!(got[i] == want)) {
                    cr_expect(0, "scale_examples B=%d n=%zu threads=%d: x[%zu] = %.9g, want %.9g (seed %llu)", B, n, nt,
                              i, got[i], want, SEED);
                    break;
                }
            }
            ddone(dx, m, "scale_examples");
            ddone(dsc, (size_t)B, "scale_examples (input scales untouched)");
            free(x); free(sc); free(got);
        }
    }
    omp_set_num_threads(saved);
}

/* ======================================================================
 * add_noise
 * ====================================================================== */

/* x[i] + std z_i as the op defines it: the product rounded to fp32, then
 * the sum (volatile: no FMA contraction here either) */
static float noisy(float x, float std, uint64_t key, uint64_t stream, size_t i) {
    float z[4];
    nawal_philox_gauss4(key, stream, i / 4, &z[0], &z[1], &z[2], &z[3]);
    volatile float a = std * z[i % 4];
    return x + a;
}

Test(cpu_dp_ops, add_noise_matches_philox) {
    start("cpu_dp_ops/add_noise");
    uint64_t key = test_rand_u64(&g_rng), stream = test_rand_u64(&g_rng);
    static const size_t lens[] = { 0, 1, 2, 63, 64, 65, 129, 1001, 100003 };
    int saved = omp_get_max_threads();
    for (int nt = 1; nt <= 3; nt++) {
        omp_set_num_threads(nt);
        for (int j = 0; j < 9; j++) {
            size_t n = lens[j];
            float *x = hrows(n, 1), *got = hf(n), *zero = hf(n);
            float std = (float)unif(0.1, 4.0);
            /* on top of x: exactly x + fl(std z_i) */
            float *d = dnew(x, n);
            O->add_noise(O, d, n, std, key, stream);
            dget(got, d, n);
            for (size_t i = 0; i < n; i++)
                if (!(got[i] == noisy(x[i], std, key, stream, i))) {
                    cr_expect(0, "add_noise n=%zu threads=%d: x[%zu] = %.9g, want %.9g (seed %llu)", n, nt, i, got[i],
                              noisy(x[i], std, key, stream, i), SEED);
                    break;
                }
            ddone(d, n, "add_noise");
            /* on zeros with std 1: the Philox normals themselves, bit for bit,
             * as +0 + z rounds them (a -0 normal comes back as +0) */
            d = dnew(zero, n);
            O->add_noise(O, d, n, 1.0f, key, stream);
            dget(got, d, n);
            for (size_t i = 0; i < n; i++) {
                float z[4];
                nawal_philox_gauss4(key, stream, i / 4, &z[0], &z[1], &z[2], &z[3]);
                volatile float want = 0.0f + z[i % 4];
                if (memcmp(&got[i], (const void *)&want, sizeof(float)) != 0) {
                    cr_expect(0, "add_noise n=%zu: z[%zu] = %.9g, philox gives %.9g (seed %llu)", n, i, got[i],
                              (float)want, SEED);
                    break;
                }
            }
            ddone(d, n, "add_noise on zeros");
            free(x); free(got); free(zero);
        }
    }
    omp_set_num_threads(saved);
}

Test(cpu_dp_ops, add_noise_streams) {
    start("cpu_dp_ops/add_noise_streams");
    uint64_t key = test_rand_u64(&g_rng), stream = test_rand_u64(&g_rng);
    size_t n = 10007;
    float *a = hf(n), *b = hf(n), *c = hf(n), *k = hf(n);
    float *runs[4] = { a, b, c, k };
    uint64_t keys[4] = { key, key, key, key ^ 1 }, streams[4] = { stream, stream, stream + 1, stream };
    for (int r = 0; r < 4; r++) {
        float *d = dnew(NULL, n);
        O->fill(O, d, 0.0f, n);
        O->add_noise(O, d, n, 1.5f, keys[r], streams[r]);
        dget(runs[r], d, n);
        ddone(d, n, "add_noise");
    }
    cr_expect(memcmp(a, b, n * sizeof(float)) == 0, "same key and stream gave different noise (seed %llu)", SEED);
    /* independent continuous draws: equal values are a ~2^-40 event each */
    size_t same_s = 0, same_k = 0;
    for (size_t i = 0; i < n; i++) { same_s += a[i] == c[i]; same_k += a[i] == k[i]; }
    cr_expect(same_s < n / 100, "stream s and s+1 agree on %zu of %zu elements (seed %llu)", same_s, n, SEED);
    cr_expect(same_k < n / 100, "keys k and k^1 agree on %zu of %zu elements (seed %llu)", same_k, n, SEED);
    free(a); free(b); free(c); free(k);
}

Test(cpu_dp_ops, add_noise_moments) {
    start("cpu_dp_ops/add_noise_moments");
    uint64_t key = test_rand_u64(&g_rng), stream = test_rand_u64(&g_rng);
    const size_t n = 1000001; /* odd: the last element uses only z0 of its pair */
    float std = (float)unif(0.5, 3.0);
    float *d = dnew(NULL, n), *x = hf(n);
    O->fill(O, d, 0.0f, n);
    O->add_noise(O, d, n, std, key, stream);
    dget(x, d, n);
    ddone(d, n, "add_noise");
    double s1 = 0.0, s2 = 0.0;
    for (size_t i = 0; i < n; i++) { s1 += x[i]; s2 += (double)x[i] * x[i]; }
    double mean = s1 / n, var = (s2 - n * mean * mean) / (n - 1), sd = sqrt(var);
    /* False-failure probability 1e-9 for the whole test, 5e-10 per check.
     * The x_i are (to 24-bit resolution) i.i.d. N(0, std^2), so
     * - mean ~ N(0, std^2 / n) exactly: |mean| <= z std / sqrt(n);
     * - (n-1) var / std^2 ~ chi^2(n-1), which by the CLT is
     *   ~ N(n-1, 2(n-1)): var / std^2 - 1 ~ N(0, 2/(n-1)), so
     *   |sd / std - 1| ~= |var / std^2 - 1| / 2 <= z sqrt(2/(n-1)) / 2.
     * Two-sided tail 5e-10: z = Phi^-1(1 - 2.5e-10) = 6.22; the chi^2 skew
     * sqrt(8/n) moves its quantile by ~ skew (z^2 - 1)/6 = 0.02 sigma, and
     * the Box-Muller tail cut at |z| <= sqrt(2 ln 2^24) = 5.77 lowers the
     * variance by < 1e-6 (vs a bound of ~9e-3): z = 6.3 covers both. A std
     * off by 1% or a mean off by 0.01 std fails. */
    const double z = 6.3;
    cr_expect(fabs(mean) <= z * std / sqrt((double)n), "noise mean %.6g, std %g, n %zu (seed %llu)", mean, std, n, SEED);
    cr_expect(fabs(sd / std - 1.0) <= z * sqrt(2.0 / (n - 1)) / 2.0, "noise sd %.6g, want %g, n %zu (seed %llu)", sd,
              std, n, SEED);
    free(x);
}

/* the libm-free Box-Muller of the DP noise against libm's on the same
 * Philox words (nawal_philox_normal2 is libm Box-Muller of words 0 and 1):
 * ln, cos and sin approximations within ~1e-7 relative, so the two agree to
 * 2e-6 x max(1, |z|) on every pair */
Test(cpu_dp_ops, gauss4_matches_libm_box_muller) {
    start("cpu_dp_ops/gauss4");
    uint64_t key = test_rand_u64(&g_rng), stream = test_rand_u64(&g_rng);
    double worst = 0.0;
    for (uint64_t i = 0; i < 200000; i++) {
        float a[4], b0, b1;
        nawal_philox_gauss4(key, stream, i, &a[0], &a[1], &a[2], &a[3]);
        nawal_philox_normal2(key, stream, i, &b0, &b1);
        double e = fmax(fabs((double)a[0] - b0) / fmax(1.0, fabs(b0)), fabs((double)a[1] - b1) / fmax(1.0, fabs(b1)));
        if (e > worst) worst = e;
    }
    cr_expect(worst <= 2e-6, "gauss4 vs libm Box-Muller: worst error %.3g (seed %llu)", worst, SEED);
    /* the approximations themselves over their whole ranges */
    for (int k = 1; k <= 1 << 16; k++) {
        float x = (float)k / 65536.0f;
        cr_assert(fabs(nawal_ln_unit(x) - log((double)x)) <= 2e-7 * fmax(1.0, fabs(log((double)x))), "ln(%g)", x);
        float c, s;
        nawal_cossin_2pi(x, &c, &s);
        cr_assert(fabs(c - cos(6.283185307179586 * x)) <= 4e-7 && fabs(s - sin(6.283185307179586 * x)) <= 4e-7,
                  "cos/sin(2 pi %g): %g %g", x, c, s);
    }
}
